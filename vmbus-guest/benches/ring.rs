//! Ring benchmark (filled in next).
fn main() {}
