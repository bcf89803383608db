//! Writes the seed corpora: `seed <DIR> [DEFAULT_MODEL.gguf]` puts each seed of
//! `ait_fuzz_targets::seeds::all` in `<DIR>/<target>/seed-<name>`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "fuzz/corpus".into()));
    let model = args.next().map(PathBuf::from);
    for (target, name, bytes) in ait_fuzz_targets::seeds::all(model.as_deref()) {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{name}")), &bytes)?;
        println!("{target}/seed-{name}: {} bytes", bytes.len());
    }
    Ok(())
}
