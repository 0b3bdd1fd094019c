//! On-disk record format (the queue helper documents and implements it here).
