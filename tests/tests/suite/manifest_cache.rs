//! A relay's manifest cache (`relay::manifest_cache`, issue 14): a model file is hashed whole
//! once; later starts check only the blocks they serve and the head, and a changed file (new
//! modification time, or a served part whose bytes changed under the same size and time) is
//! hashed again.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use ait_tests::tiny_model::{TempDir, TinyModel};
use relay::manifest_cache::{manifest_for, Source};
use web_node::model::{Arch, Manifest, ModelFile, WeightType};

/// Flips one byte of `path` at `offset`, keeping its size and modification time.
fn flip_keeping_mtime(path: &Path, offset: u64) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    std::io::Read::read_exact(&mut f, &mut byte).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[byte[0] ^ 0x40]).unwrap();
    f.set_modified(mtime).unwrap();
}

/// Where tensor `name`'s bytes start in the GGUF file at `path`.
fn tensor_offset(path: &Path, name: &str) -> u64 {
    let file = web_node::model::gguf::GgufModel::open(path).unwrap();
    file.file().tensor(name).unwrap().offset
}

#[test]
fn a_restart_hashes_only_what_it_serves() {
    let dir = TempDir::new("manifest-cache");
    let model = dir.path().join("tiny.gguf");
    let m = TinyModel::random_arch(3, Arch::Llama, 4, 128, false);
    std::fs::write(&model, m.gguf(WeightType::F32)).unwrap();
    let data = dir.path().join("data");
    let open = || ModelFile::open(&model).unwrap();
    let whole = Manifest::of_file(&open()).unwrap();

    let (first, source) = manifest_for(&model, &open(), &data, 1..3, true).unwrap();
    assert_eq!((first.id(), source), (whole.id(), Source::Computed));
    let (again, source) = manifest_for(&model, &open(), &data, 1..3, true).unwrap();
    assert_eq!((again.id(), source), (whole.id(), Source::Cached { checked: 1..3 }));

    // A block nobody here serves changes under the same size and time: not read, not seen.
    flip_keeping_mtime(&model, tensor_offset(&model, "blk.3.ffn_down.weight") + 8);
    let (m3, source) = manifest_for(&model, &open(), &data, 1..3, true).unwrap();
    assert_eq!((m3.id(), source), (whole.id(), Source::Cached { checked: 1..3 }));
    // A served block that changes is caught, and the whole file is hashed again.
    flip_keeping_mtime(&model, tensor_offset(&model, "blk.2.attn_v.weight") + 8);
    let (m2, source) = manifest_for(&model, &open(), &data, 1..3, true).unwrap();
    assert_eq!(source, Source::Computed);
    assert_eq!(m2.id(), Manifest::of_file(&open()).unwrap().id());
    assert_ne!(m2.blocks[2], whole.blocks[2]);
    assert_ne!(m2.blocks[3], whole.blocks[3], "hashing again sees the unserved change too");
    // The new manifest is what the cache holds now.
    assert_eq!(manifest_for(&model, &open(), &data, 2..3, true).unwrap(), (m2, Source::Cached { checked: 2..3 }));

    // A new modification time means a new file.
    File::options().append(true).open(&model).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    assert_eq!(manifest_for(&model, &open(), &data, 0..1, true).unwrap().1, Source::Computed);
}
