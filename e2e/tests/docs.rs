//! The docs and the CLI agree (no cluster needed). Every `ratio1 …` command
//! that README.md, docs/*.md or the chart's texts show must name subcommands
//! that exist and only flags that subcommand accepts; a flag table
//! (a Markdown table whose header names "flag" and a `ratio1 …` command)
//! must name that command's flags, their env variables and defaults; and
//! every flag of `ratio1 operator` must be documented in docs/operations.md.
//!
//! The CLI side is read from the built binary's `--help`, recursively
//! through the "Commands:" sections, so nothing here repeats the clap
//! definitions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Default)]
struct Flag {
    takes_value: bool,
    env: Option<String>,
    default: Option<String>,
}

/// One (sub)command as its `--help` describes it.
#[derive(Debug, Default)]
struct Cli {
    flags: BTreeMap<String, Flag>,
    subcommands: BTreeMap<String, Cli>,
}

impl Cli {
    fn at(&self, path: &[String]) -> Option<&Cli> {
        path.iter().try_fold(self, |c, p| c.subcommands.get(p))
    }

    fn flag_list(&self) -> String {
        self.flags.keys().map(|f| format!("--{f}")).collect::<Vec<_>>().join(" ")
    }
}

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ratio1")).args(path).arg("--help").output().expect("ratio1 runs");
    assert!(
        out.status.success(),
        "`ratio1 {} --help` failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The text between `open` and the next `]` of `line`, if any.
fn bracketed<'a>(line: &'a str, open: &str) -> Option<&'a str> {
    let rest = &line[line.find(open)? + open.len()..];
    Some(&rest[..rest.find(']')?])
}

/// Subcommand names (but `help`) and long flags of one `--help` text.
fn parse_help(text: &str) -> (Vec<String>, BTreeMap<String, Flag>) {
    let (mut subcommands, mut flags) = (vec![], BTreeMap::new());
    let mut section = "";
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            current = None;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let words: Vec<&str> = line.split_whitespace().collect();
        match section {
            "Commands:" if indent == 2 => {
                if let Some(name) = words.first().filter(|n| **n != "help") {
                    subcommands.push(name.to_string());
                }
            }
            "Options:" if indent <= 6 && line.trim_start().starts_with('-') => {
                // `  -h, --help` or `      --log-format <LOG_FORMAT>  …`
                current = None;
                if let Some(i) = words.iter().position(|w| w.starts_with("--")) {
                    let name = words[i].trim_start_matches("--").trim_end_matches(',').to_string();
                    let takes_value = words.get(i + 1).is_some_and(|w| w.starts_with('<'));
                    flags.insert(name.clone(), Flag { takes_value, ..Default::default() });
                    current = Some(name);
                }
            }
            _ => {}
        }
        // `[env: X=]` and `[default: V]` follow the flag, on its line or below.
        if let Some(f) = current.as_ref().and_then(|c| flags.get_mut(c)) {
            if let Some(env) = bracketed(line, "[env: ") {
                f.env = Some(env.split('=').next().unwrap_or_default().to_string());
            }
            if let Some(default) = bracketed(line, "[default: ") {
                f.default = Some(default.to_string());
            }
        }
    }
    (subcommands, flags)
}

fn read_cli(path: &mut Vec<String>) -> Cli {
    let (subcommands, flags) = parse_help(&help(path));
    let mut cli = Cli { flags, subcommands: BTreeMap::new() };
    for name in subcommands {
        path.push(name.clone());
        cli.subcommands.insert(name, read_cli(path));
        path.pop();
    }
    cli
}

fn cli() -> &'static Cli {
    static CLI: OnceLock<Cli> = OnceLock::new();
    CLI.get_or_init(|| read_cli(&mut vec![]))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The texts that show CLI commands: README.md, docs/*.md, and the
/// chart's README, values.yaml and NOTES.txt. Names are relative to the
/// repository.
fn doc_files() -> Vec<(String, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut more = vec![];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            more.push(p);
        }
    }
    for e in std::fs::read_dir(root().join("charts")).unwrap() {
        let chart = e.unwrap().path();
        for f in ["README.md", "values.yaml", "templates/NOTES.txt"] {
            if chart.join(f).is_file() {
                more.push(chart.join(f));
            }
        }
    }
    more.sort();
    paths.extend(more);
    paths
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(root()).unwrap_or(&p).display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The arguments of each `ratio1` invocation in a shell line: the command
/// word must be `ratio1` or a path ending in `/ratio1`, at the start of a
/// command (after `|`, `;`, `&&`, env assignments, `$ `, `sudo`). Shell
/// comments are dropped.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let code =
        match line.char_indices().find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace))) {
            Some((i, _)) => &line[..i],
            None => line,
        };
    let mut out = vec![];
    for segment in code.replace("&&", "|").replace("||", "|").replace([';', '&', '(', ')'], "|").split('|') {
        let mut words = segment.split_whitespace().map(|w| w.trim_matches(|c| c == '"' || c == '\'')).peekable();
        while let Some(w) = words.peek() {
            let assignment = w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            });
            if assignment || ["$", "sudo", "time", "exec"].contains(w) {
                words.next();
            } else {
                break;
            }
        }
        if words.next().is_some_and(|w| w == "ratio1" || w.ends_with("/ratio1")) {
            out.push(words.map(str::to_string).collect());
        }
    }
    out
}

/// The `` `code` `` spans of a line of prose.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// A flag as written (`--name`, `--name=value`, `--name,`): its name.
fn flag_name(word: &str) -> Option<&str> {
    let rest = word.strip_prefix("--")?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(rest.len());
    (end > 0).then_some(&rest[..end])
}

/// Finds every drift between the texts and the CLI; returns the drifts and
/// the number of commands and flag-table rows checked.
fn check_texts(cli: &Cli, files: &[(String, String)]) -> (Vec<String>, usize) {
    let mut drifts = vec![];
    let mut checked = 0;
    for (file, text) in files {
        let lines: Vec<&str> = text.lines().collect();
        let markdown = file.ends_with(".md");
        let mut fenced = false;
        let mut i = 0;
        while i < lines.len() {
            let at = format!("{file}:{}", i + 1);
            let line = lines[i];
            if markdown && line.trim_start().starts_with("```") {
                fenced = !fenced;
                i += 1;
                continue;
            }
            if fenced {
                // One shell command, with its continuation lines.
                let mut command = line.to_string();
                while command.ends_with('\\') && i + 1 < lines.len() {
                    command.pop();
                    i += 1;
                    command.push(' ');
                    command.push_str(lines[i]);
                }
                for args in invocations(&command) {
                    checked += 1;
                    check_invocation(cli, &at, &args, &mut drifts);
                }
                i += 1;
                continue;
            }
            if markdown
                && line.starts_with('|')
                && lines.get(i + 1).is_some_and(|l| l.starts_with("|-") || l.starts_with("| -"))
            {
                let rows = lines[i + 2..].iter().take_while(|l| l.starts_with('|')).count();
                checked += check_flag_table(cli, file, i, &lines[i..i + 2 + rows], &mut drifts);
            }
            for span in code_spans(line) {
                for args in invocations(span) {
                    checked += 1;
                    check_invocation(cli, &at, &args, &mut drifts);
                }
            }
            i += 1;
        }
    }
    (drifts, checked)
}

/// Walks `ratio1 ARGS`: each word where a subcommand is due must be one,
/// and each `--flag` must be accepted by the subcommand reached so far.
fn check_invocation(cli: &Cli, at: &str, args: &[String], drifts: &mut Vec<String>) {
    let shown = format!("ratio1 {}", args.join(" "));
    let mut node = cli;
    let mut path: Vec<&str> = vec![];
    let mut words = args.iter();
    while let Some(w) = words.next() {
        if w == "--" {
            break;
        }
        if w.starts_with("--") {
            let Some(name) = flag_name(w) else { continue };
            match node.flags.get(name) {
                Some(f) if f.takes_value && !w.contains('=') => {
                    words.next();
                }
                Some(_) => {}
                None => drifts.push(format!(
                    "{at}: `{shown}`: `ratio1{}` has no flag --{name} (it takes {})",
                    path.iter().map(|p| format!(" {p}")).collect::<String>(),
                    node.flag_list()
                )),
            }
        } else if !w.starts_with('-') && !node.subcommands.is_empty() {
            let end = w.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(w.len());
            match node.subcommands.get(&w[..end]) {
                Some(sub) => {
                    node = sub;
                    path.push(&w[..end]);
                    if end < w.len() {
                        break; // `operator<br/>` and the like: the command ends there
                    }
                }
                None => {
                    drifts.push(format!(
                        "{at}: `{shown}`: `ratio1{}` has no subcommand {:?} (it has {})",
                        path.iter().map(|p| format!(" {p}")).collect::<String>(),
                        w,
                        node.subcommands.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                    break;
                }
            }
        }
    }
}

/// A flag table: a Markdown table whose header names "flag" and a
/// `` `ratio1 …` `` command. Each row's first cell lists that command's
/// flags (and env variables, in capitals); its second cell, when it is made
/// only of values in backticks or numbers (one per flag, comma-separated),
/// their defaults. Returns the number of rows checked.
fn check_flag_table(cli: &Cli, file: &str, first: usize, table: &[&str], drifts: &mut Vec<String>) -> usize {
    let header = table[0];
    if !header.to_lowercase().contains("flag") {
        return 0;
    }
    let Some(args) = code_spans(header).into_iter().flat_map(invocations).next() else { return 0 };
    let Some(node) = cli.at(&args) else {
        drifts.push(format!("{file}:{}: flag table of `ratio1 {}`: no such command", first + 1, args.join(" ")));
        return 0;
    };
    let command = format!("ratio1 {}", args.join(" "));
    let mut rows = 0;
    for (n, row) in table.iter().enumerate().skip(2) {
        let at = format!("{file}:{}", first + n + 1);
        let cells: Vec<&str> = row.trim().trim_matches('|').split('|').map(str::trim).collect();
        let spans = code_spans(cells[0]);
        let flags: Vec<&str> = spans.iter().filter_map(|s| flag_name(s)).collect();
        let envs: Vec<&str> = spans
            .iter()
            .copied()
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .collect();
        rows += 1;
        let mut known = vec![];
        for f in &flags {
            match node.flags.get(*f) {
                Some(flag) => known.push((*f, flag)),
                None => drifts.push(format!("{at}: `{command}` has no flag --{f} (it takes {})", node.flag_list())),
            }
        }
        for env in envs {
            if !known.is_empty() && !known.iter().any(|(_, f)| f.env.as_deref() == Some(env)) {
                let real: Vec<String> =
                    known.iter().map(|(n, f)| format!("--{n}: {}", f.env.as_deref().unwrap_or("no env"))).collect();
                drifts.push(format!("{at}: `{command}`: {env} is not the env of {}", real.join(", ")));
            }
        }
        // Defaults, when the cell holds nothing but values.
        let Some(cell) = cells.get(1) else { continue };
        let values: Option<Vec<String>> = cell
            .split(", ")
            .map(|part| {
                let part = part.trim();
                let inner = part.strip_prefix('`').and_then(|p| p.strip_suffix('`'));
                match inner {
                    Some(v) if !v.contains('`') => Some(v.to_string()),
                    _ if !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()) => Some(part.to_string()),
                    _ => None,
                }
            })
            .collect();
        if let Some(values) = values.filter(|v| v.len() == known.len()) {
            for ((name, flag), doc) in known.iter().zip(values) {
                if flag.default.as_deref() != Some(doc.as_str()) {
                    drifts.push(format!(
                        "{at}: `{command} --{name}` defaults to {}, the table says {doc:?}",
                        flag.default.as_deref().map(|d| format!("{d:?}")).unwrap_or("nothing".into())
                    ));
                }
            }
        }
    }
    rows
}

/// Flags of `ratio1 operator` that `operations` (docs/operations.md) never
/// mentions.
fn undocumented_operator_flags(cli: &Cli, operations: &str) -> Vec<String> {
    let mentioned: Vec<&str> =
        operations.match_indices("--").filter_map(|(i, _)| flag_name(&operations[i..])).collect();
    cli.subcommands["operator"]
        .flags
        .keys()
        .filter(|f| *f != "help" && !mentioned.contains(&f.as_str()))
        .map(|f| format!("docs/operations.md does not mention `ratio1 operator --{f}`"))
        .collect()
}

#[test]
fn docs_show_only_commands_and_flags_the_cli_has() {
    let cli = cli();
    assert!(
        cli.at(&["license".into(), "issue".into()]).is_some_and(|c| c.flags.contains_key("peer-id")),
        "the --help parser found no `ratio1 license issue --peer-id`: {cli:#?}"
    );
    let files = doc_files();
    let (mut drifts, checked) = check_texts(cli, &files);
    let operations = &files.iter().find(|(n, _)| Path::new(n) == Path::new("docs/operations.md")).unwrap().1;
    drifts.extend(undocumented_operator_flags(cli, operations));
    assert!(checked >= 10, "only {checked} commands and flag-table rows found in the docs: is the scanner broken?");
    assert!(drifts.is_empty(), "the docs and the CLI disagree ({}):\n  {}", drifts.len(), drifts.join("\n  "));
}

/// The checker itself: drifts of every kind are reported, with file:line.
#[test]
fn docs_drift_is_reported() {
    let cli = cli();
    let doc = "\
# t

```sh
ratio1 license issue --issuer-key k --peer-id P --clas ND   # a typo
KUBECONFIG=x ./target/release/ratio1 operator \\
  --metrics-addr=0.0.0.0:1 --no-such-flag
helm install ratio1 charts/ratio1-operator   # not an invocation
ratio1 licence keygen --out k
```

Run `ratio1 network peers --endpoint http://x` or `ratio1 crdgen --out crds --docs d`.

| `ratio1 operator` flag / env | default |
|---|---|
| `--namespace` / `POD_NAMESPACE` | `default` |
| `--lease-duration-secs`, `--lease-retry-secs` | LEASE_DEFAULTS |
| `--api-addr` / `RATIO1_METRICS_ADDR` | `127.0.0.1:9090` |
| `--gone` | none |
";
    // (a row that is right, whatever the defaults are)
    let op = &cli.subcommands["operator"].flags;
    let default = |f: &str| op[f].default.clone().unwrap();
    let doc =
        doc.replace("LEASE_DEFAULTS", &format!("{}, {}", default("lease-duration-secs"), default("lease-retry-secs")));
    let (drifts, checked) = check_texts(cli, &[("t.md".into(), doc)]);
    let want = [
        "t.md:4: `ratio1 license issue --issuer-key k --peer-id P --clas ND`: `ratio1 license issue` has no flag --clas",
        "t.md:5: `ratio1 operator --metrics-addr=0.0.0.0:1 --no-such-flag`: `ratio1 operator` has no flag --no-such-flag",
        "t.md:8: `ratio1 licence keygen --out k`: `ratio1` has no subcommand \"licence\"",
        "t.md:15: `ratio1 operator --namespace` defaults to \"ratio1-system\", the table says \"default\"",
        "t.md:17: `ratio1 operator`: RATIO1_METRICS_ADDR is not the env of --api-addr: RATIO1_API_ADDR",
        "t.md:18: `ratio1 operator` has no flag --gone",
    ];
    for w in want {
        assert!(drifts.iter().any(|d| d.starts_with(w)), "not reported: {w}\nreported:\n{}", drifts.join("\n"));
    }
    assert_eq!(drifts.len(), want.len(), "{drifts:#?}");
    assert_eq!(checked, 6 + 4);
    let missing = undocumented_operator_flags(cli, "only --namespace and --block-secs here");
    assert!(missing.iter().any(|m| m.ends_with("`ratio1 operator --metrics-addr`")), "{missing:?}");
    assert!(!missing.iter().any(|m| m.ends_with("--namespace`") || m.ends_with("--help`")), "{missing:?}");
}
