//! Real `ait` processes for the swarm tests and benches: start relays, read what they print,
//! kill them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `ait` binary: `$AIT_BIN`, else `ait` next to the test executable's directory
/// (`target/<profile>/ait`, built by `cargo build --release -p relay`).
pub fn ait_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AIT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/ait
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("ait")).expect("target dir");
    assert!(bin.exists(), "{} not found: run `cargo build --release -p relay` first, or set AIT_BIN", bin.display());
    bin
}

/// The environment variable of `ait`'s `--audit-rate` (on by default, at
/// `web_node::trust::DEFAULT_AUDIT_RATE`).
pub const AUDIT_RATE_ENV: &str = "AIT_AUDIT_RATE";

/// A command running [`ait_bin`], auditing nothing unless its arguments say `--audit-rate`:
/// the default audits a random share of sessions, as paid sessions on other servers, which
/// would make the tests' payments and logs vary from run to run.
pub fn ait() -> Command {
    let mut c = Command::new(ait_bin());
    c.env(AUDIT_RATE_ENV, "0");
    c
}

/// A running `ait relay`.
pub struct Relay {
    child: Child,
    /// Its peer id.
    pub peer: String,
    /// Every address it printed (ending in `/p2p/<peer>`).
    pub addrs: Vec<String>,
    /// The `serving:` line, if it serves blocks.
    pub serving: Option<String>,
    /// Base URL of its HTTP API (`http://127.0.0.1:PORT`), if it serves one.
    pub http: Option<String>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// What it printed on stdout up to `ready`.
    pub stdout: Vec<String>,
}

impl Relay {
    /// Starts `ait relay --data-dir DIR --host 127.0.0.1 --port 0 ARGS...` and waits (up to
    /// 120 s) until it prints `ready`.
    pub fn start(data_dir: &Path, args: &[&str]) -> Relay {
        Self::try_start(data_dir, args).unwrap_or_else(|e| panic!("relay {args:?} did not start: {e}"))
    }

    /// Like [`Relay::start`], with `ait publish PATH`: a relay seeding the file `path`, with
    /// a model card signed by its key.
    pub fn publish(data_dir: &Path, path: &Path, args: &[&str]) -> Relay {
        let path = path.to_str().expect("utf-8 path");
        Self::try_start_cmd(ait().args(["publish", path]), data_dir, args, None)
            .unwrap_or_else(|e| panic!("publish {args:?} did not start: {e}"))
    }

    /// Like [`Relay::start`], returning what went wrong instead of panicking.
    pub fn try_start(data_dir: &Path, args: &[&str]) -> Result<Relay, String> {
        Self::try_start_cmd(ait().arg("relay"), data_dir, args, None)
    }

    /// Like [`Relay::start`], logging what `filter` (a `RUST_LOG` value) selects to its
    /// `relay.log`, whatever the test's own `RUST_LOG` says.
    pub fn start_logged(data_dir: &Path, args: &[&str], filter: &str) -> Relay {
        Self::try_start_cmd(ait().arg("relay"), data_dir, args, Some(filter))
            .unwrap_or_else(|e| panic!("relay {args:?} did not start: {e}"))
    }

    /// Like [`Relay::start`], running the test-only `lying_relay` at `program` (a test's
    /// `env!("CARGO_BIN_EXE_lying_relay")`): a relay of no HTTP API that serves its blocks
    /// with other weights than its model's (`--weights`) or answers with a lie about what it
    /// computed (`--lie`), and signs its answers.
    pub fn start_lying(program: &Path, data_dir: &Path, args: &[&str]) -> Relay {
        Self::try_start_cmd(&mut Command::new(program), data_dir, &[args, &["--http", "none"]].concat(), None)
            .unwrap_or_else(|e| panic!("lying relay {args:?} did not start: {e}"))
    }

    /// Starts `cmd` (`ait` and its subcommand, or another relay program) with the relay
    /// flags and `args`, as [`Relay::try_start`] does.
    fn try_start_cmd(cmd: &mut Command, data_dir: &Path, args: &[&str], log: Option<&str>) -> Result<Relay, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
        let mut child = cmd
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(if args.contains(&"--backend") { &[][..] } else { &["--backend", "cpu"][..] })
            .args(if args.contains(&"--http") { &[][..] } else { &["--http", "127.0.0.1:0"][..] })
            .args(args)
            .env(
                "RUST_LOG",
                log.map(str::to_string).or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            // Read to the end, also once nobody awaits lines: a relay that prints after
            // `ready` must not find its stdout closed.
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        // Kept next to its data for post-mortems (`RUST_LOG` sets how much). The thread returns
        // all of stderr once the process has gone, for the error below.
        let mut log = std::fs::File::create(data_dir.join("relay.log")).ok();
        let stderr_reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut relay = Relay {
            child,
            peer: String::new(),
            addrs: Vec::new(),
            serving: None,
            http: None,
            data_dir: data_dir.into(),
            stdout: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    relay.stdout.push(line.clone());
                    if let Some(p) = line.strip_prefix("peer id: ") {
                        relay.peer = p.trim().into();
                    } else if let Some(a) = line.strip_prefix("listening: ") {
                        relay.addrs.push(a.trim().into());
                    } else if let Some(u) = line.strip_prefix("http: ") {
                        relay.http = Some(u.trim().into());
                    } else if line.starts_with("serving: ") {
                        relay.serving = Some(line);
                    } else if line == "ready" {
                        return Ok(relay);
                    }
                }
                Err(_) => {
                    // Stdout ended (it exited) or the deadline passed: once it is gone, its
                    // stderr is complete (reading it earlier raced the exit message).
                    let _ = relay.child.kill();
                    let _ = relay.child.wait();
                    let stderr = stderr_reader.join().unwrap_or_default();
                    return Err(format!("no `ready` line; stderr:\n{stderr}"));
                }
            }
        }
    }

    /// The speed its `serving:` line claims, in ms per block per token (what routing goes by).
    pub fn ms_per_block(&self) -> Option<f64> {
        let line = self.serving.as_deref()?;
        let (before, _) = line.split_once(" ms per block per token")?;
        before.rsplit_once('(')?.1.parse().ok()
    }

    /// Its first address with `proto` (`tcp`, `ws`, `quic-v1`, `webrtc-direct`).
    pub fn addr(&self, proto: &str) -> String {
        self.addrs
            .iter()
            .find(|a| match proto {
                "tcp" => a.contains("/tcp/") && !a.contains("/ws"),
                p => a.contains(&format!("/{p}")),
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {proto} address in {:?}", self.addrs))
    }

    /// The model id from its `serving:` line.
    pub fn model_id(&self) -> String {
        let s = self.serving.as_deref().expect("not serving");
        s.split("of model ").nth(1).and_then(|r| r.split_whitespace().next()).expect("model id").into()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes it with SIGSTOP: its connections stay open but nothing answers.
    pub fn freeze(&mut self) {
        let ok = Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status().map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill -STOP failed");
    }

    /// How many file descriptors it holds (Linux: entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Its resident memory in KiB (Linux: `VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory it has had, in KiB (Linux: `VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh temporary directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ait-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Three relays serving `[0,10)`, `[10,20)`, `[20,30)` of the default model; the first is the
/// bootstrap node of the others.
pub fn three_relays(root: &Path, model: &Path) -> Vec<Relay> {
    three_relays_with(root, model, &[])
}

/// Like [`three_relays`], with `first_args` added to the first relay's arguments.
pub fn three_relays_with(root: &Path, model: &Path, first_args: &[&str]) -> Vec<Relay> {
    let m = model.to_str().expect("utf-8 path");
    let first = Relay::start(&root.join("r0"), &[&["--model", m, "--blocks", "0..10"][..], first_args].concat());
    let boot = first.addr("tcp");
    let mut relays = vec![first];
    for (i, blocks) in [(1, "10..20"), (2, "20..30")] {
        relays
            .push(Relay::start(&root.join(format!("r{i}")), &["--model", m, "--blocks", blocks, "--bootstrap", &boot]));
    }
    relays
}

/// Runs `ait ARGS...` to completion; returns its stdout, failing the test (with its stderr)
/// if it fails.
pub fn ait_stdout(args: &[&str]) -> String {
    let out = ait().args(args).output().expect("run ait");
    assert!(out.status.success(), "ait {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Has every relay of `seeders` serve a first range of each of `parts`. A relay cuts a part
/// out of its model file at the first request for it, so its first answer can come after
/// another seeder has served the whole part; a test that measures how a fetch spreads over
/// seeders warms them first.
pub fn warm_seeders(seeders: &[&Relay], parts: &[web_node::model::manifest::PartRef]) {
    let addrs: Vec<libp2p::Multiaddr> = seeders.iter().map(|r| r.addr("tcp").parse().expect("multiaddr")).collect();
    let peers: Vec<libp2p::PeerId> = seeders.iter().map(|r| r.peer.parse().expect("peer id")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let node = relay::swarm_client::connect(&addrs).await.expect("connect to the seeders");
        for peer in &peers {
            for part in parts {
                let mut control = node.control();
                web_node::net::parts::fetch_range(&mut control, *peer, part, 0..100)
                    .await
                    .unwrap_or_else(|e| panic!("{peer} serves no first range of {}: {e}", part.root));
            }
        }
    });
}

/// A running `ait chain dev` (a local chain with the settlement contracts), stopped with
/// Ctrl-C (SIGINT) on drop.
pub struct ChainDev {
    child: Child,
    /// The file it wrote (deployment and dev accounts).
    pub file: PathBuf,
    /// What the file says.
    pub chain: relay::settle::dev::DevChain,
}

impl ChainDev {
    /// Starts `ait chain dev --port 0 --accounts 8 --ait-each 10000 --out DIR/chain.json` and
    /// waits (up to 60 s) until it prints `ready`.
    pub fn start(dir: &Path) -> ChainDev {
        std::fs::create_dir_all(dir).expect("chain dir");
        let file = dir.join("chain.json");
        let mut child = ait()
            .args(["chain", "dev", "--port", "0", "--accounts", "8", "--ait-each", "10000"])
            .arg("--out")
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("ait chain dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(60)).is_ok();
        let chain = relay::settle::dev::DevChain::load(&file);
        match (ready, chain) {
            (true, Ok(chain)) => ChainDev { child, file, chain },
            (ready, chain) => {
                // SIGINT lets it stop its anvil too.
                let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
                std::thread::sleep(Duration::from_secs(1));
                let _ = child.kill();
                panic!("ait chain dev: ready {ready}, file {:?}", chain.err());
            }
        }
    }

    /// Sends Ctrl-C and waits (up to 20 s) for it to exit; None if it did not.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends Ctrl-C and waits (up to 20 s) for it to exit.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        self.stop().expect("ait chain dev did not stop on SIGINT")
    }
}

impl Drop for ChainDev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() && self.stop().is_none() {
            let _ = self.child.kill();
        }
    }
}
