//! `poshta user ...` (users helper implements).

pub fn run(args: super::UserArgs) -> i32 {
    let _ = args;
    todo!("users helper")
}
