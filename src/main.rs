//! The `dispynode` binary: parse the configuration, set up logging, serve.

use std::process::ExitCode;

use dispynode::config::{self, Command, ConfigError};

fn main() -> ExitCode {
    let cfg = match config::parse_args(std::env::args_os()) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::SaveConfig { toml, path }) => return save_config(&toml, path.as_deref()),
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("dispynode: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.debug);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dispynode: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispynode::node::run(*cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("dispynode: {e}");
            ExitCode::FAILURE
        }
    }
}

fn save_config(toml: &str, path: Option<&std::path::Path>) -> ExitCode {
    match path {
        None => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Some(p) => match std::fs::write(p, toml) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "dispynode: cannot write --save_config file {}: {e}",
                    p.display()
                );
                ExitCode::from(2)
            }
        },
    }
}

/// Readable lines on stderr; `-d` raises the level to debug.
fn init_logging(debug: bool) {
    let filter = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DISPYNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
