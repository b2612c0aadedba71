//! The packages (issue 6): the .deb and the .rpm lint clean, contain every file they promise,
//! depend on what the node uses and nothing more, have maintainer scripts that never start the
//! network service on installation, and ship a man page and completions generated from the CLI.
//!
//! The packages come from `packaging/build-all.sh` (run once for all tests here; the release build
//! is cargo's, so it is a no-op when fresh), or from the directory named by `DISPYNODE_PACKAGES`
//! when CI has just built them. The tools (debhelper, lintian, rpm, rpmlint, groff) are Debian
//! packages: without them the tests print SKIP and pass, unless `CI` is set, where a missing tool
//! is a failure. What installing, upgrading and purging do on a real systemd host is checked in
//! the VM: tests/vm/package/run.sh.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tools the checks run.
const CHECK_TOOLS: &[&str] = &["dpkg-deb", "lintian", "rpm", "rpmlint", "groff", "bash"];
/// Tools the build needs on top (packaging/build-*.sh).
const BUILD_TOOLS: &[&str] = &["dpkg-buildpackage", "dh", "rpmbuild", "strip", "flock"];

/// Files of the .deb (dpkg-deb -c, without the leading "."); directories are not listed.
const DEB_FILES: &[&str] = &[
    "/usr/bin/dispynode",
    "/usr/lib/systemd/system/dispynode.service",
    "/usr/lib/systemd/system/dispynode.socket",
    "/usr/lib/sysusers.d/dispynode.conf",
    "/usr/lib/tmpfiles.d/dispynode.conf",
    "/etc/dispynode/dispynode.toml",
    "/usr/share/man/man8/dispynode.8.gz",
    "/usr/share/bash-completion/completions/dispynode",
    "/usr/share/zsh/vendor-completions/_dispynode",
    "/usr/share/fish/vendor_completions.d/dispynode.fish",
    "/usr/share/doc/dispynode/copyright",
    "/usr/share/doc/dispynode/changelog.Debian.gz",
    "/usr/share/doc/dispynode/README.md.gz",
    "/usr/share/lintian/overrides/dispynode",
];

/// Files of the .rpm (rpm -qlp). zsh completions go where RPM distributions' zsh looks.
fn rpm_files() -> Vec<String> {
    let mut v: Vec<String> = [
        "/usr/bin/dispynode",
        "/usr/lib/systemd/system/dispynode.service",
        "/usr/lib/systemd/system/dispynode.socket",
        "/usr/lib/sysusers.d/dispynode.conf",
        "/usr/lib/tmpfiles.d/dispynode.conf",
        "/etc/dispynode",
        "/etc/dispynode/dispynode.toml",
        "/usr/share/man/man8/dispynode.8.gz",
        "/usr/share/bash-completion/completions/dispynode",
        "/usr/share/zsh/site-functions/_dispynode",
        "/usr/share/fish/vendor_completions.d/dispynode.fish",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("/usr/share/licenses/dispynode-{VERSION}/LICENSE"));
    v.push(format!("/usr/share/doc/dispynode-{VERSION}/README.md"));
    v
}

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Written past libtest's capture, so that CI logs show skips and lint summaries of passing runs.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The packages, built once for all tests; None (after a SKIP note) when the tools are missing
/// outside CI.
fn packages(test: &str) -> Option<&'static Packages> {
    static PACKAGES: OnceLock<Result<Option<Packages>, String>> = OnceLock::new();
    let result = PACKAGES.get_or_init(|| {
        let prebuilt = std::env::var_os("DISPYNODE_PACKAGES").map(PathBuf::from);
        let mut tools: Vec<&str> = CHECK_TOOLS.to_vec();
        if prebuilt.is_none() {
            tools.extend(BUILD_TOOLS);
        }
        let missing: Vec<&str> = tools.into_iter().filter(|t| !have(t)).collect();
        if !missing.is_empty() {
            let msg = format!(
                "missing tools: {} (Debian: apt-get install debhelper lintian rpm rpmlint \
                 groff-base binutils, or run packaging/build-all.sh as root once)",
                missing.join(" ")
            );
            return if ci() { Err(msg) } else { Ok(None) };
        }
        match prebuilt {
            Some(dir) => find_prebuilt(&dir).map(Some),
            None => build().map(Some),
        }
    });
    match result {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            note(&format!(
                "SKIP {test}: packaging tools are missing and CI is not set \
                 (apt-get install debhelper lintian rpm rpmlint groff-base)"
            ));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn find_prebuilt(dir: &Path) -> Result<Packages, String> {
    let pick = |prefix: &str, suffix: &str| -> Result<PathBuf, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
            })
            .ok_or_else(|| {
                format!(
                    "no {prefix}*{suffix} in DISPYNODE_PACKAGES={}",
                    dir.display()
                )
            })
    };
    Ok(Packages {
        deb: pick(&format!("dispynode_{VERSION}-"), ".deb")?,
        rpm: pick(&format!("dispynode-{VERSION}-"), ".rpm")?,
    })
}

/// packaging/build-all.sh into the target directory of this test build (so the release build is
/// shared with a developer's `cargo build --release`), without its lint step: the tests lint.
fn build() -> Result<Packages, String> {
    let target_dir = Path::new(env!("CARGO_BIN_EXE_dispynode"))
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let started = std::time::Instant::now();
    let out = Command::new(root().join("packaging/build-all.sh"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("DISPYNODE_PKG_LINT", "0")
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("packaging/build-all.sh: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "packaging/build-all.sh failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let (Some(deb), Some(rpm)) = (lines.next(), lines.next()) else {
        return Err(format!(
            "packaging/build-all.sh printed no package paths: {stdout}"
        ));
    };
    note(&format!(
        "packages built in {:.0?}: {deb} {rpm}",
        started.elapsed()
    ));
    Ok(Packages {
        deb: deb.into(),
        rpm: rpm.into(),
    })
}

/// Runs a command and returns its stdout; panics with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn sh(script: &str) -> String {
    run("sh", &["-c", script])
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The .deb unpacked (data and control) into a temporary directory.
fn unpack_deb(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    run(
        "dpkg-deb",
        &[
            "-x",
            deb.to_str().unwrap(),
            d.join("root").to_str().unwrap(),
        ],
    );
    run(
        "dpkg-deb",
        &[
            "-e",
            deb.to_str().unwrap(),
            d.join("DEBIAN").to_str().unwrap(),
        ],
    );
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every non-comment line of an override/filter file must follow a comment (its reason).
fn assert_each_entry_has_a_reason(path: &Path, is_entry: impl Fn(&str) -> bool) {
    let text = read(path);
    let mut reason = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            reason = true;
        } else if is_entry(line) {
            assert!(
                reason,
                "{}: {line:?} has no written reason above it",
                path.display()
            );
        } else if line.is_empty() {
            reason = false;
        }
    }
}

#[test]
fn deb_is_lintian_clean() {
    let Some(p) = packages("deb_is_lintian_clean") else {
        return;
    };
    // --display-info: show the informational tags too (the assertion is about E and W only).
    let out = Command::new("lintian")
        .args(["--display-info", p.deb.to_str().unwrap()])
        .output()
        .expect("lintian");
    let report = String::from_utf8_lossy(&out.stdout);
    note(&format!("lintian {}:\n{report}", p.deb.display()));
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        bad.is_empty(),
        "lintian errors/warnings:\n{}",
        bad.join("\n")
    );
    assert!(
        out.status.success(),
        "lintian failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_each_entry_has_a_reason(&root().join("debian/dispynode.lintian-overrides"), |l| {
        !l.is_empty()
    });
}

#[test]
fn rpm_is_rpmlint_clean() {
    let Some(p) = packages("rpm_is_rpmlint_clean") else {
        return;
    };
    let config = root().join("rpm/rpmlint.toml");
    let out = Command::new("rpmlint")
        .args(["-c", config.to_str().unwrap(), p.rpm.to_str().unwrap()])
        .output()
        .expect("rpmlint");
    let report = String::from_utf8_lossy(&out.stdout);
    note(&format!("rpmlint {}:\n{report}", p.rpm.display()));
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.contains(": E: ") || l.contains(": W: "))
        .collect();
    assert!(
        bad.is_empty(),
        "rpmlint errors/warnings:\n{}",
        bad.join("\n")
    );
    assert!(
        report.contains("1 packages and 0 specfiles checked; 0 errors, 0 warnings"),
        "no clean rpmlint summary ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Filters are the quoted strings of the Filters list.
    assert_each_entry_has_a_reason(&config, |l| l.starts_with('\''));
}

#[test]
fn deb_contents_dependencies_and_scripts() {
    let Some(p) = packages("deb_contents_dependencies_and_scripts") else {
        return;
    };
    let deb = p.deb.to_str().unwrap();
    let listing = run("dpkg-deb", &["-c", deb]);
    let files: BTreeSet<&str> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|f| f.trim_start_matches('.'))
        .collect();
    for f in DEB_FILES {
        assert!(files.contains(f), "{f} missing from the .deb:\n{listing}");
    }
    // Nothing else: the Python worker is inside the binary (packaging/README.md).
    let extra: Vec<&&str> = files.iter().filter(|f| !DEB_FILES.contains(f)).collect();
    assert!(extra.is_empty(), "unexpected files in the .deb: {extra:?}");

    let info = run("dpkg-deb", &["-I", deb]);
    note(&format!("dpkg-deb -I {deb}:\n{info}"));
    let depends = run("dpkg-deb", &["-f", deb, "Depends"]);
    let names: BTreeSet<&str> = depends
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .collect();
    assert!(
        names.contains("python3"),
        "Depends lacks python3: {depends}"
    );
    // Only what the node uses: Python for function jobs, systemd-sysusers for the account, and
    // the shared libraries of the binary.
    let allowed = [
        "python3",
        "systemd",
        "systemd-standalone-sysusers",
        "systemd-sysusers",
        "libc6",
        "libgcc-s1",
    ];
    for n in &names {
        assert!(allowed.contains(n), "unexpected dependency {n}: {depends}");
    }
    assert_eq!(
        run("dpkg-deb", &["-f", deb, "Version"]).trim(),
        format!("{VERSION}-1"),
        "the .deb's version follows Cargo.toml"
    );

    let dir = unpack_deb(&p.deb);
    let control = dir.path().join("DEBIAN");
    assert_eq!(
        read(&control.join("conffiles")).trim(),
        "/etc/dispynode/dispynode.toml"
    );
    let postinst = read(&control.join("postinst"));
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    assert!(postinst.contains("systemd-tmpfiles"), "{postinst}");
    // Installation never starts or enables anything; an upgrade try-restarts what runs.
    for forbidden in [
        "deb-systemd-invoke start",
        "deb-systemd-invoke restart",
        "systemctl start",
        "systemctl enable",
        "_dh_action=start",
    ] {
        assert!(!postinst.contains(forbidden), "postinst has {forbidden:?}");
    }
    assert!(
        postinst.contains("deb-systemd-invoke try-restart 'dispynode.service' 'dispynode.socket'"),
        "{postinst}"
    );
    // deb-systemd-helper enable only inside the "was it enabled before" branch.
    for (i, line) in postinst.lines().enumerate() {
        if line.contains("deb-systemd-helper enable") {
            let before: Vec<&str> = postinst.lines().take(i).collect();
            assert!(
                before
                    .iter()
                    .rev()
                    .take(3)
                    .any(|l| l.contains("was-enabled")),
                "unconditional enable in postinst: {line}"
            );
        }
    }
    assert!(
        !control.join("preinst").exists() || !read(&control.join("preinst")).contains("stop"),
        "the service must keep running during an upgrade (restarted after it)"
    );
    let prerm = read(&control.join("prerm"));
    assert!(
        prerm.contains(r#"[ "$1" = remove ]"#)
            && prerm.contains("deb-systemd-invoke stop 'dispynode.service' 'dispynode.socket'"),
        "remove must stop the service and the socket:\n{prerm}"
    );
    let postrm = read(&control.join("postrm"));
    assert!(
        postrm.contains("rm -rf /var/lib/dispynode /etc/dispynode")
            && postrm.contains("deb-systemd-helper purge"),
        "purge must remove state and configuration:\n{postrm}"
    );

    // The shipped units and configuration are the tree's.
    for (shipped, source) in [
        (
            "usr/lib/systemd/system/dispynode.service",
            "systemd/dispynode.service",
        ),
        (
            "usr/lib/systemd/system/dispynode.socket",
            "systemd/dispynode.socket",
        ),
        (
            "usr/lib/sysusers.d/dispynode.conf",
            "systemd/dispynode.sysusers",
        ),
        (
            "usr/lib/tmpfiles.d/dispynode.conf",
            "packaging/dispynode.tmpfiles",
        ),
        ("etc/dispynode/dispynode.toml", "systemd/dispynode.toml"),
    ] {
        assert_eq!(
            read(&dir.path().join("root").join(shipped)),
            read(&root().join(source)),
            "{shipped} differs from {source}"
        );
    }
}

#[test]
fn rpm_contents_dependencies_and_scripts() {
    let Some(p) = packages("rpm_contents_dependencies_and_scripts") else {
        return;
    };
    let rpm = p.rpm.to_str().unwrap();
    let listing = run("rpm", &["-qlp", rpm]);
    let files: BTreeSet<&str> = listing
        .lines()
        .filter(|l| !l.starts_with("/usr/lib/.build-id"))
        .collect();
    let expected = rpm_files();
    for f in &expected {
        assert!(
            files.contains(f.as_str()),
            "{f} missing from the .rpm:\n{listing}"
        );
    }
    let extra: Vec<&&str> = files
        .iter()
        .filter(|f| {
            !expected.iter().any(|e| e == *f)
                && ![
                    format!("/usr/share/licenses/dispynode-{VERSION}"),
                    format!("/usr/share/doc/dispynode-{VERSION}"),
                ]
                .iter()
                .any(|d| d == *f)
        })
        .collect();
    assert!(extra.is_empty(), "unexpected files in the .rpm: {extra:?}");

    assert_eq!(
        run("rpm", &["-qp", "--qf", "%{VERSION}-%{RELEASE}", rpm]),
        format!("{VERSION}-1")
    );
    // %config(noreplace): flags "c" (config) and "n" (noreplace).
    let flags = run(
        "rpm",
        &["-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm],
    );
    assert!(
        flags
            .lines()
            .any(|l| l == "cn /etc/dispynode/dispynode.toml"),
        "dispynode.toml is not %config(noreplace):\n{flags}"
    );
    let requires = run("rpm", &["-qRp", rpm]);
    assert!(
        requires.lines().any(|l| l.trim() == "python3"),
        "{requires}"
    );
    for r in requires.lines().map(str::trim) {
        let ok = r == "python3"
            || r == "systemd"
            || r == "/bin/sh"
            || r.starts_with("config(dispynode)")
            || r.starts_with("rpmlib(")
            || r.starts_with("rtld(")
            || r.starts_with("ld-linux")
            || r.starts_with("libc.so.6")
            || r.starts_with("libm.so.6")
            || r.starts_with("libgcc_s.so.1");
        assert!(ok, "unexpected requirement {r:?}:\n{requires}");
    }
    let scripts = run("rpm", &["-qp", "--scripts", rpm]);
    for needed in [
        "systemd-sysusers /usr/lib/sysusers.d/dispynode.conf",
        "systemd-tmpfiles --create /usr/lib/tmpfiles.d/dispynode.conf",
        "preset dispynode.socket dispynode.service",
        "disable --now dispynode.socket dispynode.service",
        "try-restart dispynode.service",
    ] {
        assert!(
            scripts.contains(needed),
            "rpm scriptlets lack {needed:?}:\n{scripts}"
        );
    }
    assert!(
        !scripts.contains("systemctl start") && !scripts.contains("enable "),
        "{scripts}"
    );
    let changelog = run("rpm", &["-qp", "--changelog", rpm]);
    assert!(changelog.contains(&format!("- {VERSION}-1")), "{changelog}");
}

#[test]
fn deb_and_rpm_ship_the_same_binary() {
    let Some(p) = packages("deb_and_rpm_ship_the_same_binary") else {
        return;
    };
    let deb_sum = sh(&format!(
        "dpkg-deb --fsys-tarfile {} | tar -xO ./usr/bin/dispynode | sha256sum",
        quote(&p.deb)
    ));
    let rpm_sum = run(
        "rpm",
        &[
            "-qp",
            "--qf",
            "[%{FILEDIGESTS} %{FILENAMES}\n]",
            p.rpm.to_str().unwrap(),
        ],
    );
    let deb_sum = deb_sum.split_whitespace().next().unwrap();
    assert!(
        rpm_sum
            .lines()
            .any(|l| l == format!("{deb_sum} /usr/bin/dispynode")),
        "the binaries differ: .deb {deb_sum}, .rpm:\n{rpm_sum}"
    );
    // Static on purpose (packaging/README.md): no interpreter, no shared library.
    let dir = unpack_deb(&p.deb);
    let bin = dir.path().join("root/usr/bin/dispynode");
    let headers = run("readelf", &["-lW", bin.to_str().unwrap()]);
    assert!(
        !headers.contains("INTERP"),
        "the packaged binary has a dynamic loader:\n{headers}"
    );
    let dynamic = run("readelf", &["-dW", bin.to_str().unwrap()]);
    assert!(
        !dynamic.contains("(NEEDED)"),
        "the packaged binary needs shared libraries:\n{dynamic}"
    );
    assert!(
        dynamic.contains("PIE") && dynamic.contains("NOW"),
        "the packaged binary must stay a static-pie with BIND_NOW:\n{dynamic}"
    );
}

#[test]
fn man_page_renders_and_documents_every_option() {
    let Some(p) = packages("man_page_renders_and_documents_every_option") else {
        return;
    };
    let dir = unpack_deb(&p.deb);
    let page = dir.path().join("root/usr/share/man/man8/dispynode.8.gz");
    // Warnings on (-ww) and output discarded (-z): any diagnostic is a defect of the page.
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("zcat {} | groff -man -Tascii -ww -z", quote(&page)),
        ])
        .output()
        .expect("groff");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff diagnostics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain text (no overstriking, no hyphenation, wide lines) to search.
    let text = sh(&format!(
        "zcat {} | groff -man -Tascii -P-c -P-b -P-u -P-o -rHY=0 -rLL=200n",
        quote(&page)
    ));
    assert!(text.contains("dispynode(8)"), "{text}");
    for section in ["NAME", "SYNOPSIS", "OPTIONS", "FILES", "SEE ALSO"] {
        assert!(
            text.lines().any(|l| l.trim_end() == section),
            "no {section}:\n{text}"
        );
    }
    let mut cmd = dispynode::config::command();
    cmd.build();
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(
                text.contains(&format!("--{long}")),
                "--{long} is not in the man page:\n{text}"
            );
        }
    }
    for path in [
        "/etc/dispynode/dispynode.toml",
        "systemctl enable --now dispynode.socket",
    ] {
        assert!(text.contains(path), "{path} is not in the man page");
    }
}

#[test]
fn completions_offer_the_options() {
    let Some(p) = packages("completions_offer_the_options") else {
        return;
    };
    let dir = unpack_deb(&p.deb);
    let r = dir.path().join("root");
    // Each shell's spelling of the option: fish lists long options as `-l name`.
    for (file, node_port, memory) in [
        (
            "usr/share/bash-completion/completions/dispynode",
            "--node_port",
            "--job_memory_max",
        ),
        (
            "usr/share/zsh/vendor-completions/_dispynode",
            "--node_port",
            "--job_memory_max",
        ),
        (
            "usr/share/fish/vendor_completions.d/dispynode.fish",
            "-l node_port",
            "-l job_memory_max",
        ),
    ] {
        let text = read(&r.join(file));
        assert!(text.contains(node_port), "{file} lacks {node_port}");
        assert!(text.contains(memory), "{file} lacks {memory}");
    }
    // The bash completion parses, and completes an option prefix.
    let bash = r.join("usr/share/bash-completion/completions/dispynode");
    run("bash", &["-n", bash.to_str().unwrap()]);
    let completed = run(
        "bash",
        &[
            "-c",
            &format!(
                ". {}; COMP_WORDS=(dispynode --node_p); COMP_CWORD=1; \
                 _dispynode dispynode --node_p dispynode; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                quote(&bash)
            ),
        ],
    );
    assert!(
        completed.lines().any(|l| l == "--node_port"),
        "bash completes --node_p to:\n{completed}"
    );
}

/// The packages on a real systemd host: tests/vm/package/run.sh (a fresh Debian 12 VM for the
/// .deb, a chroot for the .rpm). Opt-in like the project's other VM tests, with
/// DISPYNODE_VM_TESTS=1 (QEMU takes both cores, so `.ci/run` runs the VM tests in a step of
/// their own); skipped with a message where the VM harness or the dispy venv is missing.
#[test]
fn vm_package_end_to_end() {
    if std::env::var("DISPYNODE_VM_TESTS").as_deref() != Ok("1") {
        note("SKIP vm_package_end_to_end: opt-in with DISPYNODE_VM_TESTS=1 (boots a QEMU/TCG VM: ~2 min with the image cached, ~4 min without; or run tests/vm/package/run.sh)");
        return;
    }
    let harness = root().join("../shared/vm/run-in-vm.sh");
    if !harness.exists() {
        note(&format!(
            "SKIP vm_package_end_to_end: no VM harness at {}",
            harness.display()
        ));
        return;
    }
    let venv = std::env::var("DISPY_VENV")
        .unwrap_or_else(|_| root().join("target/dispy-venv").display().to_string());
    if !Path::new(&venv)
        .join("lib/python3.11/site-packages/dispy")
        .exists()
    {
        note(&format!(
            "SKIP vm_package_end_to_end: no dispy venv at {venv} (the interop tests make it)"
        ));
        return;
    }
    let Some(p) = packages("vm_package_end_to_end") else {
        return;
    };
    let out = Command::new("timeout")
        .args(["2400", "bash"])
        .arg(root().join("tests/vm/package/run.sh"))
        .args([&p.deb, &p.rpm])
        .env("DISPY_VENV", &venv)
        .stdin(Stdio::null())
        .output()
        .expect("run tests/vm/package/run.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .collect();
    note(&results.join("\n"));
    let summary = text
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed") && l.contains(" passed, "))
        .unwrap_or_else(|| panic!("no summary (status {:?}):\n{text}", out.status));
    let passed: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        out.status.success() && summary.ends_with(" 0 failed") && passed >= 50,
        "VM package check: {summary}\n{text}"
    );
}
