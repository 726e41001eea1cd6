//! The container image: `hack/build-image.sh` (what `make image` runs) builds the OCI archive from
//! the current sources (incrementally, in a target directory of its own); these tests unpack it
//! as a container runtime does and run the binary found in it. As root (CI), the binary runs in
//! the image's own root filesystem and as the image's user, so it cannot lean on anything of the
//! machine that built it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use serde_json::Value;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The archive, built once per test binary.
fn archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        eprintln!("building the image (hack/build-image.sh); a cold build takes minutes");
        let out = Command::new(format!("{MANIFEST_DIR}/hack/build-image.sh"))
            .current_dir(MANIFEST_DIR)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run hack/build-image.sh");
        assert!(out.status.success(), "hack/build-image.sh failed");
        let path = String::from_utf8(out.stdout).expect("utf-8 path");
        Path::new(MANIFEST_DIR).join(path.trim())
    })
}

/// An OCI archive unpacked: its layout, the image config, and the root filesystem.
struct Unpacked {
    _dir: tempfile::TempDir,
    index: Value,
    config: Value,
    rootfs: PathBuf,
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').expect("digest algorithm:hex");
    layout.join("blobs").join(algorithm).join(hex)
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tar(args: &[&str]) {
    let status = Command::new("tar").args(args).status().expect("run tar");
    assert!(status.success(), "tar {args:?} failed");
}

fn unpack(archive: &Path) -> Unpacked {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&layout).expect("layout dir");
    std::fs::create_dir_all(&rootfs).expect("rootfs dir");
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    tar(&["-xf", &s(archive), "-C", &s(&layout)]);
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0",
        "not an OCI image layout"
    );
    let index = json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("index manifests");
    assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
    let manifest = json(&blob(
        &layout,
        manifests[0]["digest"].as_str().expect("manifest digest"),
    ));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    // Layers in order, as a runtime stacks them.
    for layer in manifest["layers"].as_array().expect("layers") {
        let media = layer["mediaType"].as_str().expect("layer media type");
        let flag = if media.ends_with("+gzip") {
            "-xzf"
        } else {
            "-xf"
        };
        let path = blob(&layout, layer["digest"].as_str().expect("layer digest"));
        tar(&[flag, &s(&path), "-C", &s(&rootfs)]);
    }
    Unpacked {
        _dir: dir,
        index,
        config,
        rootfs,
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs the image's entrypoint with `args`: in the image's root as its user when this process may
/// chroot, else directly.
fn run_entrypoint(image: &Unpacked, args: &[&str]) -> Output {
    let entrypoint: Vec<&str> = image.config["config"]["Entrypoint"]
        .as_array()
        .expect("an entrypoint")
        .iter()
        .map(|v| v.as_str().expect("entrypoint string"))
        .collect();
    let user = image.config["config"]["User"].as_str().expect("a user");
    let mut cmd = if is_root() {
        let mut c = Command::new("chroot");
        c.arg(format!("--userspec={user}"))
            .arg(&image.rootfs)
            .args(&entrypoint);
        c
    } else {
        let mut c = Command::new(image.rootfs.join(entrypoint[0].trim_start_matches('/')));
        c.args(&entrypoint[1..]);
        c
    };
    // Nothing of this process's environment but where `chroot` is.
    let path = std::env::var_os("PATH").unwrap_or_default();
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .output()
        .expect("run the image's entrypoint")
}

/// Whether an ELF file asks for a dynamic loader (a `PT_INTERP` program header).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
    let phoff = usize::try_from(u64::from_le_bytes(
        elf[0x20..0x28].try_into().expect("8 bytes"),
    ))
    .expect("offset");
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == 3
    })
}

/// The image reference deploy/ uses (`images:` in deploy/kustomization.yaml).
fn deploy_ref() -> String {
    let out = Command::new(format!("{MANIFEST_DIR}/hack/build-image.sh"))
        .arg("--print-ref")
        .current_dir(MANIFEST_DIR)
        .output()
        .expect("run hack/build-image.sh --print-ref");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn deploy_tags_the_image_with_the_crate_version() {
    let reference = deploy_ref();
    let (_, tag) = reference.rsplit_once(':').expect("name:tag");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "deploy/kustomization.yaml's newTag must be Cargo.toml's version"
    );
}

#[test]
fn image_binary_runs_alone_as_a_non_root_user() {
    let image = unpack(archive());
    let config = &image.config;
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/poolkeeper"])
    );
    let user = config["config"]["User"].as_str().expect("a user");
    let uid = user.split(':').next().expect("uid");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "the image must run as a numeric non-root user (runAsNonRoot checks it): {user}"
    );

    // Scratch-style: the binary and nothing else.
    let files: Vec<String> = std::fs::read_dir(&image.rootfs)
        .expect("rootfs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["poolkeeper"], "the image holds only the binary");
    let binary = std::fs::read(image.rootfs.join("poolkeeper")).expect("binary");
    assert!(
        !has_interpreter(&binary),
        "the binary is dynamically linked: it cannot run in an empty image"
    );

    let version = run_entrypoint(&image, &["--version"]);
    assert!(
        version.status.success(),
        "--version failed in the image: {}",
        String::from_utf8_lossy(&version.stderr)
    );
    let reference = deploy_ref();
    let tag = reference.rsplit_once(':').expect("name:tag").1;
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("poolkeeper {tag}"),
        "the binary's version is the image tag"
    );

    let crds = run_entrypoint(&image, &["crds"]);
    assert!(
        crds.status.success(),
        "crds failed in the image: {}",
        String::from_utf8_lossy(&crds.stderr)
    );
    let expected =
        std::fs::read_to_string(format!("{MANIFEST_DIR}/crds/poolkeeper.yaml")).expect("crds/");
    assert!(
        String::from_utf8_lossy(&crds.stdout) == expected,
        "the image's `crds` differs from crds/poolkeeper.yaml"
    );

    // Built without the `dev` feature: no local control plane in production.
    let dev = run_entrypoint(&image, &["dev", "--help"]);
    assert!(!dev.status.success(), "the image has the dev subcommand");
    assert!(
        String::from_utf8_lossy(&dev.stderr).contains("unrecognized subcommand"),
        "{}",
        String::from_utf8_lossy(&dev.stderr)
    );
}

#[test]
fn archive_names_the_image_as_deploy_does() {
    let image = unpack(archive());
    let annotations = &image.index["manifests"][0]["annotations"];
    let reference = deploy_ref();
    assert_eq!(
        annotations["io.containerd.image.name"], reference,
        "containerd and docker name the loaded image from this annotation"
    );
    assert_eq!(
        annotations["org.opencontainers.image.ref.name"],
        reference.rsplit_once(':').expect("name:tag").1
    );
    assert_eq!(
        image.config["config"]["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
}
