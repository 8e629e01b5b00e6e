//! Images without a registry: the pool's base image is built here from the host's static
//! busybox as a deterministic root filesystem tar (sorted entries, mtime 0, numeric owners),
//! wrapped in a `docker save` archive whose image config is fixed too (created at the epoch),
//! and loaded with `POST /images/load`. Same busybox in, same bytes out: the tag is the
//! rootfs's content hash and the image id (the config's sha256) is identical on every build and
//! every host. A toolbox image is the same wrapping around a rootfs tar the operator supplies
//! (a Debian minbase, say).
//!
//! Pure CPU work; callers run it on a blocking thread.

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::digest;
use serde_json::json;

use crate::domain::template::{SECRETS_DIR, STAGING_DIR, UID, USER, WORKDIR};
use crate::error::PoolError;
use crate::runtime::{COMPONENT, COMPONENT_LABEL, CONTENT_LABEL, OWNER, OWNER_LABEL};

/// The command every pooled container runs as PID 1: a shell that reaps every child (orphans
/// of execs included), survives `kill -9 -1` from the reset (it only loses its `sleep`) and
/// exits at once on SIGTERM.
pub fn init_command() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done".into(),
    ]
}

/// A built image, ready to load.
#[derive(Debug, Clone)]
pub struct ImageArchive {
    /// `repo:<first 12 hex of the rootfs sha256>`.
    pub reference: String,
    /// `sha256:<config digest>`: the image id Docker will report.
    pub image_id: String,
    /// sha256 of the rootfs tar, hex.
    pub content_sha256: String,
    /// The `docker save` archive.
    pub archive: Vec<u8>,
}

enum Node {
    Dir { mode: u32, uid: u32 },
    File { mode: u32, data: Vec<u8> },
    Link { target: String },
}

fn header(path: &str, node: &Node) -> Result<tar::Header, PoolError> {
    let mut h = tar::Header::new_gnu();
    let (kind, mode, uid, size) = match node {
        Node::Dir { mode, uid } => (tar::EntryType::Directory, *mode, *uid, 0),
        Node::File { mode, data } => (tar::EntryType::Regular, *mode, 0, data.len() as u64),
        Node::Link { .. } => (tar::EntryType::Symlink, 0o777, 0, 0),
    };
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(uid));
    h.set_mtime(0);
    h.set_size(size);
    h.set_path(path)
        .map_err(|e| PoolError::io(format!("tar path {path}"), e))?;
    if let Node::Link { target } = node {
        h.set_link_name(target)
            .map_err(|e| PoolError::io(format!("tar link {path}"), e))?;
    }
    h.set_cksum();
    Ok(h)
}

fn write_tar(nodes: &BTreeMap<String, Node>) -> Result<Vec<u8>, PoolError> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in nodes {
        let h = header(path, node)?;
        let data: &[u8] = match node {
            Node::File { data, .. } => data,
            _ => &[],
        };
        b.append(&h, data)
            .map_err(|e| PoolError::io(format!("tar entry {path}"), e))?;
    }
    b.into_inner()
        .map_err(|e| PoolError::io("finishing the tar", e))
}

/// The base rootfs: `busybox` (the static binary's bytes) with a symlink per applet in `/bin`,
/// `/etc/passwd` and `/etc/group` with the pool user, and the pool's mount points.
pub fn base_rootfs_tar(busybox: &[u8], applets: &[String]) -> Result<Vec<u8>, PoolError> {
    let mut nodes = BTreeMap::new();
    let dir = |mode| Node::Dir { mode, uid: 0 };
    for d in ["bin/", "etc/", "home/", "mnt/", "run/"] {
        nodes.insert(d.to_owned(), dir(0o755));
    }
    nodes.insert(
        "bin/busybox".into(),
        Node::File {
            mode: 0o755,
            data: busybox.to_vec(),
        },
    );
    for a in applets {
        let a = a.trim();
        if a.is_empty() || a == "busybox" || a.contains('/') || a.starts_with('.') {
            continue;
        }
        nodes.insert(
            format!("bin/{a}"),
            Node::Link {
                target: "busybox".into(),
            },
        );
    }
    nodes.insert(
        "etc/passwd".into(),
        Node::File {
            mode: 0o644,
            data: format!(
                "root:x:0:0:root:/root:/sbin/nologin\nliquid:x:{UID}:{UID}:liquid:/home/liquid:/bin/sh\n"
            )
            .into_bytes(),
        },
    );
    nodes.insert(
        "etc/group".into(),
        Node::File {
            mode: 0o644,
            data: format!("root:x:0:\nliquid:x:{UID}:\n").into_bytes(),
        },
    );
    nodes.insert(
        "home/liquid/".into(),
        Node::Dir {
            mode: 0o755,
            uid: UID,
        },
    );
    let staging = STAGING_DIR.trim_start_matches('/');
    nodes.insert(format!("{staging}/"), dir(0o755));
    let secrets = SECRETS_DIR.trim_start_matches('/');
    nodes.insert(
        format!("{secrets}/"),
        Node::Dir {
            mode: 0o700,
            uid: UID,
        },
    );
    nodes.insert("tmp/".into(), dir(0o1777));
    let work = WORKDIR.trim_start_matches('/');
    nodes.insert(
        format!("{work}/"),
        Node::Dir {
            mode: 0o755,
            uid: UID,
        },
    );
    write_tar(&nodes)
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Wraps a rootfs tar into a loadable `docker save` archive tagged `repo:<content hash>`.
pub fn wrap_rootfs(repo: &str, rootfs: Vec<u8>, kind: &str) -> Result<ImageArchive, PoolError> {
    let layer_sha = hex::encode(digest::digest(&digest::SHA256, &rootfs));
    let config = json!({
        "architecture": docker_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Cmd": init_command(),
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/home/liquid"],
            "User": USER,
            "WorkingDir": WORKDIR,
            "Labels": {
                OWNER_LABEL: OWNER,
                COMPONENT_LABEL: COMPONENT,
                CONTENT_LABEL: layer_sha,
                "io.liquid.image": kind,
            },
        },
        "history": [{
            "created": "1970-01-01T00:00:00Z",
            "created_by": format!("liquid container-pool {kind} image"),
        }],
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_sha}")] },
    });
    let config_bytes = serde_json::to_vec(&config)
        .map_err(|e| PoolError::io("image config", std::io::Error::other(e)))?;
    let config_sha = hex::encode(digest::digest(&digest::SHA256, &config_bytes));
    let reference = format!("{repo}:{}", &layer_sha[..12]);
    let manifest = json!([{
        "Config": format!("{config_sha}.json"),
        "RepoTags": [reference],
        "Layers": [format!("{layer_sha}/layer.tar")],
    }]);
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| PoolError::io("image manifest", std::io::Error::other(e)))?;
    let mut nodes = BTreeMap::new();
    nodes.insert(
        format!("{layer_sha}/"),
        Node::Dir {
            mode: 0o755,
            uid: 0,
        },
    );
    nodes.insert(
        format!("{layer_sha}/layer.tar"),
        Node::File {
            mode: 0o644,
            data: rootfs,
        },
    );
    nodes.insert(
        format!("{config_sha}.json"),
        Node::File {
            mode: 0o644,
            data: config_bytes,
        },
    );
    nodes.insert(
        "manifest.json".into(),
        Node::File {
            mode: 0o644,
            data: manifest_bytes,
        },
    );
    Ok(ImageArchive {
        reference,
        image_id: format!("sha256:{config_sha}"),
        content_sha256: layer_sha,
        archive: write_tar(&nodes)?,
    })
}

/// Builds the base image archive from a static busybox at `busybox` (blocking: reads the
/// binary and runs `busybox --list`).
pub fn build_base(repo: &str, busybox: &Path) -> Result<ImageArchive, PoolError> {
    let bytes = std::fs::read(busybox).map_err(|e| {
        PoolError::io(
            format!(
                "reading {} (install busybox-static, or set docker.busybox_path)",
                busybox.display()
            ),
            e,
        )
    })?;
    let out = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| PoolError::io(format!("running {} --list", busybox.display()), e))?;
    if !out.status.success() {
        return Err(PoolError::io(
            format!("{} --list failed", busybox.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    wrap_rootfs(repo, base_rootfs_tar(&bytes, &applets)?, "base")
}

/// Builds the toolbox image archive from a rootfs tar file (blocking).
pub fn build_toolbox(repo: &str, rootfs: &Path) -> Result<ImageArchive, PoolError> {
    let bytes = std::fs::read(rootfs).map_err(|e| {
        PoolError::io(
            format!(
                "reading the toolbox rootfs {} (docker.toolbox_rootfs)",
                rootfs.display()
            ),
            e,
        )
    })?;
    wrap_rootfs(repo, bytes, "toolbox")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u64, u32, u64)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path()
                        .unwrap()
                        .display()
                        .to_string()
                        .trim_end_matches('/')
                        .to_owned(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_base_rootfs_is_deterministic_and_owned_right() {
        let applets = vec![
            "sh".to_owned(),
            "ls".to_owned(),
            "busybox".to_owned(),
            "../x".to_owned(),
        ];
        let a = base_rootfs_tar(b"\x7fELF fake", &applets).unwrap();
        let b = base_rootfs_tar(b"\x7fELF fake", &applets).unwrap();
        assert_eq!(a, b);
        let e = entries(&a);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries are sorted");
        assert!(names.contains(&"bin/sh") && names.contains(&"bin/ls"));
        assert!(!names.iter().any(|n| n.contains("x") && n.contains("..")));
        assert!(e.iter().all(|x| x.3 == 0), "mtime 0 everywhere");
        let work = e.iter().find(|x| x.0 == "workspace").unwrap();
        assert_eq!((work.1, work.2), (10001, 0o755));
        let secrets = e.iter().find(|x| x.0 == "run/secrets").unwrap();
        assert_eq!((secrets.1, secrets.2), (10001, 0o700));
        let tmp = e.iter().find(|x| x.0 == "tmp").unwrap();
        assert_eq!(tmp.2, 0o1777);
    }

    #[test]
    fn wrapping_gives_the_same_id_and_a_content_tag() {
        let rootfs = base_rootfs_tar(b"bin", &["sh".to_owned()]).unwrap();
        let a = wrap_rootfs("liquid/pool-base", rootfs.clone(), "base").unwrap();
        let b = wrap_rootfs("liquid/pool-base", rootfs, "base").unwrap();
        assert_eq!(a.image_id, b.image_id);
        assert_eq!(a.archive, b.archive);
        assert_eq!(
            a.reference,
            format!("liquid/pool-base:{}", &a.content_sha256[..12])
        );
        let names: Vec<String> = entries(&a.archive).into_iter().map(|e| e.0).collect();
        assert!(names.contains(&"manifest.json".to_owned()));
        assert!(names.contains(&format!("{}/layer.tar", a.content_sha256)));
        assert!(names.contains(&format!(
            "{}.json",
            a.image_id.trim_start_matches("sha256:")
        )));
        let other = wrap_rootfs(
            "liquid/pool-base",
            base_rootfs_tar(b"other", &[]).unwrap(),
            "base",
        )
        .unwrap();
        assert_ne!(other.image_id, a.image_id);
    }
}
