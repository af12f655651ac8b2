//! Builds the kernel programs (agent-ebpf) for the BPF target with the nightly toolchain
//! and leaves the object in OUT_DIR, where `source::live` embeds it. `AYA_BUILD_SKIP=1`
//! skips this (clippy, docs or fuzzing on a machine without the eBPF toolchain) and
//! leaves an empty object, which `seqshield run` refuses with a clear message.
//!
//! The nested build is what aya-build runs (same flags, same target dir), but quiet:
//! its output is shown only when it fails, instead of ~40 `warning: Compiling …` lines
//! on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> anyhow::Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kernel_crate = manifest.join("../agent-ebpf");
    // The kernel crate's shared types live in agent-common: a change there rebuilds the
    // object too.
    for watched in [kernel_crate.clone(), manifest.join("../agent-common/src")] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!("cargo:rerun-if-env-changed={SKIP}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let object = out_dir.join("seqshield");
    if std::env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning={SKIP} is set: the agent is built without its kernel programs");
        std::fs::write(&object, [])?;
        return Ok(());
    }
    let endian = std::env::var("CARGO_CFG_TARGET_ENDIAN").unwrap_or_default();
    let target = if endian == "big" {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let target_dir = out_dir.join("aya-build/target/agent-ebpf");
    let output = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "agent-ebpf",
        ])
        .args([
            "--bins",
            "--release",
            "--target",
            target,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&kernel_crate)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        // This build's compiler settings are not the nightly's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS_HOST")
        .output()
        .context("running `rustup run nightly cargo build` for the kernel programs")?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the kernel programs (agent-ebpf) failed, output above; `cargo xtask setup` installs the nightly toolchain, rust-src and bpf-linker they need"
        );
    }
    let built = target_dir.join(target).join("release/seqshield");
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}
