//! `poshta serve`: run the daemon in the foreground (logs on stderr).

pub fn run(args: super::ServeArgs) -> i32 {
    let path = crate::config::config_path(args.config.as_deref());
    crate::net::serve(&path)
}
