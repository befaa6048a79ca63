//! Topic names and filters: validation and a fast matching trie.
//!
//! **Not built yet.** This crate is a placeholder so the workspace has its final shape;
//! the work is tracked in issue 3. It exports nothing.
#![cfg_attr(not(feature = "std"), no_std)]
