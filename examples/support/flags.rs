//! The examples' command line: flags that each take a value (`--name value` or `--name=value`),
//! and `-h`/`--help`. Shared by the examples that take flags, so each keeps only its own list.

use std::fmt::Display;
use std::str::FromStr;

/// Reads the program's flags, calling `set(name, value)` for each one listed in `known`.
///
/// `-h`/`--help` prints `usage` and exits with code 0. An unknown flag, a missing value or an
/// error from `set` is printed as `{program}: {error}` followed by `usage`, and the process
/// exits with code 2.
pub fn parse(
    program: &str,
    usage: &str,
    known: &[&str],
    mut set: impl FnMut(&str, &str) -> Result<(), String>,
) {
    if let Err(err) = read(usage, known, &mut set) {
        eprintln!("{program}: {err}\n{usage}");
        std::process::exit(2);
    }
}

fn read(
    usage: &str,
    known: &[&str],
    set: &mut impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{usage}");
            std::process::exit(0);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        // Checked before the value is taken, so that `--bogus` is reported as unknown.
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown argument {name:?}"));
        }
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{name} needs a value"))?;
        set(&name, &value)?;
    }
    Ok(())
}

/// `value` parsed as a number, or an error that names the flag.
pub fn number<T: FromStr>(name: &str, value: &str) -> Result<T, String>
where
    T::Err: Display,
{
    value.parse().map_err(|e| format!("{name}: {e}"))
}
