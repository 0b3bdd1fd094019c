//! Wall-clock time and its formats.
