//! The relay book and the file beside the ring it is saved in (`switchyard-<node>.relays`),
//! rewritten on every change so a control plane restart loses no relay.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use super::book::Book;

/// The relay book of this node and where it is saved.
pub struct BookFile {
    book: Mutex<Book>,
    path: PathBuf,
}

impl BookFile {
    /// The book saved at `path`, or an empty one.
    pub fn load(path: PathBuf) -> Self {
        let book = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(saved) => {
                    let b = Book::restore(saved);
                    tracing::info!(file = %path.display(), outgoing = b.outs().count(), incoming = b.ins().count(), "relays restored");
                    b
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "relay file unreadable; starting without relays");
                    Book::default()
                }
            },
            Err(_) => Book::default(),
        };
        Self {
            book: Mutex::new(book),
            path,
        }
    }

    /// Never held across an await; a poisoned lock still holds a consistent book (every
    /// change is one map operation).
    pub fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the book to its file (a temporary file renamed over it, so a crash leaves the
    /// old or the new one).
    pub fn save(&self) {
        let json = match serde_json::to_vec_pretty(&self.lock().saved()) {
            Ok(j) => j,
            Err(e) => return tracing::error!(error = %e, "relay book does not encode"),
        };
        let tmp = self.path.with_extension("relays.tmp");
        let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::error!(file = %self.path.display(), error = %e, "cannot save the relays");
        }
    }
}
