//! Filesystem store (in progress).
