//! Builds the dashboard (`web/`) with esbuild into OUT_DIR so `assets.rs`
//! can embed it: `npm ci` once (when node_modules is missing or older than
//! package-lock.json), then `node build.mjs`. No CDN, no network at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let web = manifest.join("../../web");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("web");
    for p in ["src", "package.json", "package-lock.json", "build.mjs"] {
        println!("cargo:rerun-if-changed={}", web.join(p).display());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        panic!(
            "npm is needed to build the dashboard (web/) into sysmonstm-gateway; \
             run scripts/install-deps.sh (or `apt-get install nodejs npm`)"
        );
    }
    if needs_install(&web) {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&web),
            "npm ci",
        );
    }
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(&out)
            .current_dir(&web),
        "node build.mjs",
    );
}

/// node_modules is (re)installed when missing or older than the lock file.
fn needs_install(web: &Path) -> bool {
    let stamp = web.join("node_modules/.package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&stamp), modified(&web.join("package-lock.json"))) {
        (Some(s), Some(l)) => s < l,
        _ => true,
    }
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{what} failed ({s}) while building the dashboard in web/"),
        Err(e) => panic!("cannot run {what} for the dashboard in web/: {e}"),
    }
}
