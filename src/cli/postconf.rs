//! `poshta postconf` (config helper implements).

pub fn run(args: super::PostconfArgs) -> i32 {
    let _ = args;
    todo!("config helper")
}
