//! The `dispynode` binary: parse the configuration, set up logging, serve.

use std::process::ExitCode;

use dispynode::config::{self, Command, ConfigError};

fn main() -> ExitCode {
    // The jail helper mode comes first: it is our own binary re-executed to confine a job, and
    // must not parse options, log, or start threads.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == dispynode::sandbox::JAIL_ARG)
    {
        dispynode::sandbox::jail_main(argv);
    }
    // The program-job spawner: the same, started once per node (single-threaded too).
    if argv
        .get(1)
        .is_some_and(|a| a == dispynode::sandbox::SPAWNER_ARG)
    {
        dispynode::sandbox::spawner_main(&argv);
    }
    // Packaging: the man page and shell completions, generated from the CLI definition.
    if argv
        .get(1)
        .is_some_and(|a| a == dispynode::assets::GENERATE_ARG)
    {
        return dispynode::assets::generate_main(&argv[2..]);
    }
    let cfg = match config::parse_args(argv) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::SaveConfig {
            toml,
            path,
            private,
        }) => return save_config(&toml, path.as_deref(), private),
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("dispynode: {e}");
            return ExitCode::from(e.exit_status());
        }
    };
    dispynode::systemd::init_logging(cfg.debug);
    // Sockets, state, sandbox and the privilege drop happen before any thread exists.
    let prepared = match dispynode::node::prepare(*cfg) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("dispynode: {e}");
            return ExitCode::from(e.exit_status());
        }
    };
    // One runtime thread: the daemon spends ~0.3 ms CPU per job, and every hand-off between
    // two runtime threads is a futex wake-up, which on a VM costs more than the work itself
    // (sequential latency 2.41 -> 2.04 ms, bench/README.md). Blocking work goes to
    // spawn_blocking.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dispynode: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispynode::node::serve(prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("dispynode: {e}");
            ExitCode::FAILURE
        }
    }
}

fn save_config(toml: &str, path: Option<&std::path::Path>, private: bool) -> ExitCode {
    match config::write_config(toml, path, private) {
        Ok(()) => {
            if let (Some(p), true) = (path, private) {
                // The packaged service reads its configuration as the `dispynode` user, which
                // cannot read a private root-owned file; its secret belongs in the credential.
                eprintln!(
                    "dispynode: {} holds the secret, so only its owner may read it (mode 0600); \
                     the packaged service takes its secret from /etc/dispynode/secret instead",
                    p.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            match path {
                Some(p) => eprintln!(
                    "dispynode: cannot write --save_config file {}: {e}",
                    p.display()
                ),
                None => eprintln!("dispynode: cannot write the configuration: {e}"),
            }
            ExitCode::from(2)
        }
    }
}
