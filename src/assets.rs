//! Packaging assets generated from the CLI definition: the manual page `dispynode(8)` (clap_mangen)
//! and shell completions for bash, zsh and fish (clap_complete).
//!
//! They come from [`crate::config::command`], the same `clap::Command` that parses the command
//! line, so an option added there appears in the man page and the completions of the next package
//! without anyone editing them. `dispynode __generate-assets DIR` is how the package builds
//! (packaging/, debian/rules, rpm/) get them; the argument is not part of the documented CLI.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};

/// `dispynode __generate-assets DIR` writes the man page and completions into DIR.
pub const GENERATE_ARG: &str = "__generate-assets";

/// The name of each generated file in DIR, in the layout the packages install:
/// `dispynode.8` (man8), `dispynode.bash` (bash-completion's `completions/dispynode`),
/// `_dispynode` (zsh `vendor-completions`), `dispynode.fish` (fish `vendor_completions.d`).
pub const MAN_PAGE: &str = "dispynode.8";
pub const BASH_COMPLETION: &str = "dispynode.bash";
pub const ZSH_COMPLETION: &str = "_dispynode";
pub const FISH_COMPLETION: &str = "dispynode.fish";

/// Entry point of `__generate-assets`: `args` are the arguments after it (just DIR).
pub fn generate_main(args: &[OsString]) -> ExitCode {
    let [dir] = args else {
        eprintln!("usage: dispynode {GENERATE_ARG} DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(dir)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "dispynode: cannot write the packaging assets to {}: {e}",
                Path::new(dir).display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Writes every asset into `dir` (created if missing) and returns their paths.
pub fn generate(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: Vec<u8>| -> io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        written.push(path);
        Ok(())
    };
    put(MAN_PAGE, man_page()?)?;
    put(BASH_COMPLETION, completion(Shell::Bash))?;
    put(ZSH_COMPLETION, completion(Shell::Zsh))?;
    put(FISH_COMPLETION, completion(Shell::Fish))?;
    Ok(written)
}

/// The completion script for `shell`.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut cmd = crate::config::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dispynode", &mut out);
    out
}

/// The manual page `dispynode(8)` as roff source.
///
/// clap_mangen renders NAME, SYNOPSIS, DESCRIPTION and OPTIONS from the CLI definition; the
/// sections an administrator looks for in a daemon's page (configuration file, systemd units,
/// files, environment, exit status, see also) are added here, since clap has no place for them.
pub fn man_page() -> io::Result<Vec<u8>> {
    let cmd = crate::config::command();
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let mut man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("dispynode {version}"));
    if let Some(date) = source_date() {
        man = man.date(date);
    }
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    description(&mut out)?;
    man.render_options_section(&mut out)?;
    aliases(&mut out)?;
    sections(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// The other names of the options (clap_mangen leaves out aliases): the hyphenated spellings,
/// and dispy 4.15.2's names for three of them.
fn aliases(w: &mut dyn Write) -> io::Result<()> {
    let mut r = Roff::new();
    r.control("SH", ["OPTION ALIASES"]);
    para(
        &mut r,
        [roman(
            "Each option also takes the names below; --host, --ext_host and --scheduler_host \
             are what dispy 4.15.2's dispynode.py calls them.",
        )],
    );
    for arg in crate::config::command().get_arguments() {
        let (Some(long), Some(other)) = (arg.get_long(), arg.get_visible_aliases()) else {
            continue;
        };
        let mut line = vec![bold(format!("--{long}")), roman(": ")];
        for (i, alias) in other.iter().enumerate() {
            if i > 0 {
                line.push(roman(", "));
            }
            line.push(bold(format!("--{alias}")));
        }
        r.control("br", []);
        r.text(line);
    }
    r.to_writer(w)
}

/// Paragraphs appended to clap's one-line DESCRIPTION.
fn description(w: &mut dyn Write) -> io::Result<()> {
    let mut r = Roff::new();
    para(
        &mut r,
        [roman(
            "dispynode serves clients of dispy, the Python distributed-computing framework \
             (dispy 4.15 wire protocol): it announces itself to schedulers on the network, \
             receives computations (Python functions or programs) and their files, runs their \
             jobs on the local CPUs and sends the results back.",
        )],
    );
    para(
        &mut r,
        [
            roman(
                "The daemon itself never runs or unpickles data from clients: a per-computation \
             Python worker does, confined like each job (its own cgroup, Landlock, rlimits, no \
             privileges). Started as root, the daemon first drops to the account given by ",
            ),
            bold("--user"),
            roman(" and "),
            bold("--group"),
            roman("."),
        ],
    );
    para(
        &mut r,
        [
            roman("Installed from the package, it runs as the service "),
            bold("dispynode.service"),
            roman(", started by "),
            bold("dispynode.socket"),
            roman(
                " on the first client contact. The socket is not enabled by the installation; \
             enable it with",
            ),
        ],
    );
    example(&mut r, &["systemctl enable --now dispynode.socket"]);
    r.to_writer(w)
}

/// CONFIGURATION, SYSTEMD, FILES, ENVIRONMENT, EXIT STATUS, SEE ALSO.
fn sections(w: &mut dyn Write) -> io::Result<()> {
    let mut r = Roff::new();

    r.control("SH", ["CONFIGURATION FILE"]);
    para(
        &mut r,
        [
            roman("A TOML file read with "),
            bold("--config"),
            roman(
                " holds the same settings under the long option names, with underscores \
             (for example ",
            ),
            bold("node_port = 9701"),
            roman(" or "),
            bold("job_memory_max = \"2g\""),
            roman(
                "). An option on the command line overrides the file, and the file the defaults. \
             Unknown keys and bad values are refused at start with a message that names them. ",
            ),
            bold("dispynode --config"),
            roman(" "),
            italic("FILE"),
            roman(" "),
            bold("--save_config"),
            roman(" prints the effective configuration."),
        ],
    );

    r.control("SH", ["SYSTEMD"]);
    para(
        &mut r,
        [roman("The service reads "),
        bold("/etc/dispynode/dispynode.toml"),
        roman(", runs as the system user "),
        bold("dispynode"),
        roman(" and keeps its files and undelivered results under "),
        bold("/var/lib/dispynode"),
        roman(
            ". It sends READY, STATUS and watchdog notifications, logs to the journal with the \
             fields COMPUTATION, JOB, CLIENT, FILE, STATUS and DURATION, and uses the cgroup \
             subtree delegated to it for the per-job limits. Useful commands:",
        )],
    );
    example(
        &mut r,
        &[
            "systemctl status dispynode",
            "journalctl -u dispynode",
            "systemctl reload dispynode",
            "systemctl edit dispynode.socket",
        ],
    );
    para(
        &mut r,
        [roman(
            "Reload (SIGHUP) re-reads the configuration file and applies max_file_size, \
             msg_timeout, zombie_interval, the service window and the per-job limits at once. \
             SIGTERM terminates the running jobs, tells their clients and exits. The node port \
             of the service is set in dispynode.socket; keep node_port the same.",
        )],
    );

    r.control("SH", ["FILES"]);
    file(
        &mut r,
        "/etc/dispynode/dispynode.toml",
        "Configuration of the service; every option is shown there with its default or an \
         example, commented out, except the two directories the service writes to.",
    );
    file(
        &mut r,
        "/etc/dispynode/secret",
        "Shared secret for clients (optional, readable by root only); the service receives it \
         as the systemd credential dispynode-secret.",
    );
    file(
        &mut r,
        "/var/lib/dispynode",
        "Files sent by clients and the node's state (undelivered results).",
    );
    file(
        &mut r,
        "/usr/lib/systemd/system/dispynode.socket, dispynode.service",
        "The systemd units; change them with drop-ins (systemctl edit).",
    );
    file(
        &mut r,
        "/usr/lib/sysusers.d/dispynode.conf",
        "The system account the service runs as.",
    );

    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []);
    r.text([bold("DISPYNODE_LOG")]);
    r.text([roman(
        "Log filter in tracing syntax (for example \"debug\"); overrides --debug.",
    )]);
    r.control("TP", []);
    r.text([bold("TMPDIR")]);
    r.text([roman(
        "Parent of the default --dest_path_prefix (<TMPDIR>/dispy/node) when none is configured.",
    )]);

    r.control("SH", ["EXIT STATUS"]);
    para(
        &mut r,
        [roman(
            "0 after a clean shutdown (or --serve clients served); 2 for a bad option, \
             configuration file or value, or a start that cannot work until the host changes \
             (TLS files, the account to drop to, a directory the node will not take over, the \
             socket unit, the Python interpreter): the packaged unit does not retry those \
             (RestartPreventExitStatus=2); 75 (EX_TEMPFAIL) when a host name given to --ip_addr \
             or --ext_ip_addr does not resolve (DNS may not be up yet); 1 when the node cannot \
             start for a reason a retry may cure (a port still taken, an I/O error) or fails \
             while serving.",
        )],
    );

    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("systemd.socket"),
        roman("(5), "),
        bold("systemd.exec"),
        roman("(5), "),
        bold("systemd.resource-control"),
        roman("(5), "),
        bold("sysusers.d"),
        roman("(5); the dispy manual at https://dispy.org/dispynode.html"),
    ]);
    r.to_writer(w)
}

fn para(r: &mut Roff, text: impl Into<Vec<Inline>>) {
    r.control("PP", []);
    r.text(text);
}

/// Indented command lines, one per line.
fn example(r: &mut Roff, cmds: &[&str]) {
    r.control("RS", []);
    r.control("PP", []);
    r.control("nf", []);
    for cmd in cmds {
        r.text([bold(*cmd)]);
    }
    r.control("fi", []);
    r.control("RE", []);
}

fn file(r: &mut Roff, path: &str, what: &str) {
    r.control("TP", []);
    r.text([italic(path)]);
    r.text([roman(what)]);
}

/// The page's date from `SOURCE_DATE_EPOCH` (set by dpkg and rpmbuild from the changelog), so
/// that the same sources give the same page; no date otherwise.
fn source_date() -> Option<String> {
    let secs: i64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

/// Proleptic Gregorian date of a day number counted from 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn man_page_has_every_long_option_and_the_extra_sections() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains(".TH dispynode 8"), "{page}");
        for arg in crate::config::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                // roff escapes '-' as '\-'.
                let shown = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(page.contains(&shown), "--{long} missing from the man page");
            }
            for alias in arg.get_visible_aliases().unwrap_or_default() {
                let shown = format!("\\-\\-{}", alias.replace('-', "\\-"));
                assert!(
                    page.contains(&shown),
                    "alias --{alias} missing from the man page"
                );
            }
        }
        for s in [
            "FILES",
            "SEE ALSO",
            "EXIT STATUS",
            "/etc/dispynode/dispynode.toml",
        ] {
            assert!(page.contains(s), "{s} missing");
        }
    }

    #[test]
    fn completions_offer_the_options() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completion(shell)).unwrap();
            assert!(text.contains("node_port"), "{shell}: {text}");
            assert!(!text.contains(GENERATE_ARG), "{shell}");
        }
    }
}
