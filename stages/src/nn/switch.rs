//! A per-thread flag held for a scope: the guards of [`super::fallback`] and
//! [`super::wanted`], restored on drop (early returns and panics included).

use std::cell::Cell;
use std::thread::LocalKey;

pub struct Scoped {
    key: &'static LocalKey<Cell<bool>>,
    before: bool,
}

impl Scoped {
    pub(crate) fn set(key: &'static LocalKey<Cell<bool>>, on: bool) -> Self {
        Scoped { key, before: key.replace(on) }
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        self.key.set(self.before);
    }
}
