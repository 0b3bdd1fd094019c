//! `poshta check` (config helper implements).

pub fn run(args: super::CheckArgs) -> i32 {
    let _ = args;
    todo!("config helper")
}
