//! loom models of the reactive-lock core live in `tests/`; run them with
//! `RUSTFLAGS="--cfg loom" cargo test -p reactive-lock-loom-tests --release`
//! (`.ci/loom.sh`). Without `--cfg loom` this crate is empty.
