//! A store opened from a destructor while its thread panics (the e2e harness's cleanup of a failing test): it
//! opens, instead of aborting the process. In a file of its own, so that nothing installed the store's panic hook
//! before.

use std::sync::{Arc, Mutex};

use sdp_reconciler::store::Store;

struct OpenOnDrop(std::path::PathBuf, Arc<Mutex<Option<bool>>>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        let opened = Store::open(&self.0).and_then(|s| s.installation()).is_ok();
        *self.1.lock().unwrap_or_else(|e| e.into_inner()) = Some(opened);
    }
}

#[test]
fn a_store_opens_from_a_destructor_while_the_thread_panics() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Arc::new(Mutex::new(None));
    let guard = OpenOnDrop(dir.path().join("data"), opened.clone());
    let result = std::panic::catch_unwind(move || {
        let _guard = guard;
        panic!("a failing test");
    });
    assert!(result.is_err());
    assert_eq!(
        *opened.lock().unwrap(),
        Some(true),
        "the store opened during the unwinding"
    );
}
