//! Manual pages and shell completions, generated from a binary's clap definitions (so they
//! never drift from `--help`). The package build calls the hidden `generate-docs` subcommand of
//! `bootfarm` and `bootstorm`; nothing here runs while serving.

use std::path::{Path, PathBuf};

/// Writes `DIR/man/NAME.1` plus one page per subcommand (`NAME-SUB.1`, `NAME-SUB-SUB.1`) and
/// `DIR/completions/NAME.bash` and `DIR/completions/_NAME` (zsh). Returns the files written.
pub fn write(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let name = cmd.get_name().to_string();
    let (man, comp) = (dir.join("man"), dir.join("completions"));
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: cannot create: {e}", d.display()))?;
    }
    let before = list(&man);
    clap_mangen::generate_to(cmd.clone(), &man).map_err(|e| format!("{}: cannot write the manual pages: {e}", man.display()))?;
    let mut out: Vec<PathBuf> = list(&man).into_iter().filter(|p| !before.contains(p)).collect();
    let mut cmd = cmd;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
        let p = clap_complete::generate_to(shell, &mut cmd, &name, &comp)
            .map_err(|e| format!("{}: cannot write the {shell} completion: {e}", comp.display()))?;
        out.push(p);
    }
    out.sort();
    Ok(out)
}

fn list(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_and_completions_for_every_subcommand() {
        let cmd = clap::Command::new("demo")
            .about("A demo")
            .subcommand(clap::Command::new("serve").about("Serves").arg(clap::Arg::new("config").long("config")))
            .subcommand(clap::Command::new("vdisk").subcommand(clap::Command::new("inspect")))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = std::env::temp_dir().join(format!("bootfarm-manual-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = super::write(cmd, &dir).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["_demo", "demo.bash", "demo-serve.1", "demo-vdisk-inspect.1", "demo-vdisk.1", "demo.1"]);
        let page = std::fs::read_to_string(dir.join("man/demo-serve.1")).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq") && page.contains("\\-\\-config"), "{page}");
        let bash = std::fs::read_to_string(dir.join("completions/demo.bash")).unwrap();
        assert!(bash.contains("complete -F _demo") && bash.contains("inspect"), "{bash}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
