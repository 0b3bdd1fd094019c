//! `poshta serve`.

pub fn run(args: super::ServeArgs) -> i32 {
    let _ = args;
    todo!()
}
