//! Change detection for live sandboxes by file-system notifications (the `notify` crate:
//! inotify on Linux, FSEvents on macOS), so a diff examines only the paths that were touched
//! instead of re-hashing the tree.
//!
//! One watcher serves every sandbox of this replica; each sandbox directory
//! (`<root>/<tenant>/<id>`) is watched recursively and every event under its `work` directory
//! marks the relative path dirty. The set only grows until the sandbox closes: a diff re-checks
//! the dirty paths (and what lies below them) with the stat pre-check and hashes only what moved.
//! Events arrive asynchronously, so [`ChangeWatcher::dirty`] first drops a marker file in the
//! sandbox directory and waits until the watcher has delivered its event: the kernel queues the
//! events of one watcher in order, so every earlier change has been recorded by then. A sandbox
//! whose watch could not be set up, whose events overflowed or whose marker did not come back
//! reports `None`, and the caller falls back to a full stat walk (still no full re-hash).

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long [`ChangeWatcher::dirty`] waits for its marker before falling back.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(3);
const MARKER_PREFIX: &str = ".sync-";

#[derive(Default)]
struct Live {
    dirty: BTreeSet<String>,
    /// Events may have been lost: the next diff walks the whole tree.
    overflow: bool,
}

#[derive(Default)]
struct State {
    live: HashMap<Uuid, Live>,
    barriers: HashMap<String, oneshot::Sender<()>>,
}

/// The replica's file-event watcher.
#[derive(Clone)]
pub struct ChangeWatcher {
    root: PathBuf,
    state: Arc<Mutex<State>>,
    watcher: Arc<Mutex<Option<RecommendedWatcher>>>,
}

type Events = mpsc::UnboundedReceiver<notify::Result<notify::Event>>;

impl ChangeWatcher {
    /// A watcher for sandboxes under `root` (canonical) and the event loop to spawn. Without a
    /// notification backend every sandbox reports `None` (full stat walks).
    pub fn new(root: PathBuf) -> (ChangeWatcher, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(error) => {
                tracing::warn!(%error, "no file-event watcher; diffs walk the whole work copy");
                None
            }
        };
        (
            ChangeWatcher {
                root,
                state: Arc::default(),
                watcher: Arc::new(Mutex::new(watcher)),
            },
            rx,
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts watching a sandbox directory. A sandbox watched after changes may already have
    /// happened (a resume) starts in overflow, so its first diff walks the tree.
    pub fn watch(&self, id: Uuid, sandbox_dir: &Path, fresh: bool) {
        let ok = {
            let mut guard = self
                .watcher
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match guard.as_mut() {
                Some(w) => match w.watch(sandbox_dir, RecursiveMode::Recursive) {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(%error, sandbox = %id, "cannot watch the sandbox; its diffs walk the tree");
                        false
                    }
                },
                None => false,
            }
        };
        self.state().live.insert(
            id,
            Live {
                dirty: BTreeSet::new(),
                overflow: !ok || !fresh,
            },
        );
    }

    /// Stops watching a sandbox.
    pub fn unwatch(&self, id: Uuid, sandbox_dir: &Path) {
        self.state().live.remove(&id);
        let mut guard = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = guard.as_mut() {
            let _ = w.unwatch(sandbox_dir);
        }
    }

    /// True when this replica watches the sandbox.
    pub fn is_live(&self, id: Uuid) -> bool {
        self.state().live.contains_key(&id)
    }

    /// Records a change made through the permission pipeline (no need to wait for its event).
    pub fn mark(&self, id: Uuid, rel: &str) {
        if let Some(live) = self.state().live.get_mut(&id) {
            live.dirty.insert(rel.to_owned());
        }
    }

    /// Marks a sandbox for a full walk on its next diff.
    pub fn invalidate(&self, id: Uuid) {
        if let Some(live) = self.state().live.get_mut(&id) {
            live.overflow = true;
        }
    }

    /// The paths touched in the sandbox's work copy since it was watched, after every event
    /// queued before this call has been delivered; `None` when the set cannot be trusted.
    pub async fn dirty(&self, id: Uuid, sandbox_dir: &Path) -> Option<BTreeSet<String>> {
        if self.state().live.get(&id).is_none_or(|l| l.overflow) {
            return None;
        }
        let token = format!("{MARKER_PREFIX}{}", Uuid::now_v7().simple());
        let (tx, rx) = oneshot::channel();
        self.state().barriers.insert(token.clone(), tx);
        let marker = sandbox_dir.join(&token);
        let arrived = match tokio::fs::write(&marker, b"").await {
            Ok(()) => tokio::time::timeout(BARRIER_TIMEOUT, rx).await.is_ok(),
            Err(_) => false,
        };
        self.state().barriers.remove(&token);
        let _ = tokio::fs::remove_file(&marker).await;
        if !arrived {
            self.invalidate(id);
            return None;
        }
        let state = self.state();
        let live = state.live.get(&id)?;
        (!live.overflow).then(|| live.dirty.clone())
    }

    /// The event loop: runs until `shutdown`.
    pub async fn run(self, mut events: Events, shutdown: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                e = events.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
            };
            self.handle(event);
        }
        // Drop the OS watcher so its thread ends with the service.
        self.watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    fn handle(&self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(%error, "file-event watcher error; live sandboxes fall back to walks");
                for live in self.state().live.values_mut() {
                    live.overflow = true;
                }
                return;
            }
        };
        // Opening or reading changes nothing (and the diff's own walk opens directories).
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let mut state = self.state();
        if event.need_rescan() {
            for live in state.live.values_mut() {
                live.overflow = true;
            }
            return;
        }
        for path in &event.paths {
            let Ok(rest) = path.strip_prefix(&self.root) else {
                continue;
            };
            let parts: Vec<String> = rest
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            // <tenant>/<id>/work/<path...> or <tenant>/<id>/.sync-<token>
            let Some(id) = parts.get(1).and_then(|s| Uuid::parse_str(s).ok()) else {
                continue;
            };
            match parts.get(2).map(String::as_str) {
                Some("work") => {
                    if let Some(live) = state.live.get_mut(&id) {
                        if parts.len() == 3 {
                            live.overflow = true;
                        } else {
                            live.dirty.insert(parts[3..].join("/"));
                        }
                    }
                }
                Some(name) if name.starts_with(MARKER_PREFIX) && parts.len() == 3 => {
                    if let Some(tx) = state.barriers.remove(name) {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    }
}
