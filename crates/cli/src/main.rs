//! The pbft command-line tool.
fn main() {}
