//! `poshta queue`: mailq output.

pub fn run(args: super::QueueArgs) -> i32 {
    let _ = args;
    todo!()
}
