//! `membrane validate`: policy manifests validated as the Cilium agent does.

use crate::input::{InputArgs, StdinWording};
use crate::printers::{Output, json, text};
use membrane_policy::api::Resource;
use membrane_policy::diag::Diagnostic;
use membrane_policy::model::FileId;
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::translate::Secrets;
use membrane_policy::yaml::Embedding;
use membrane_policy::{Options, Severity};

#[derive(clap::Args)]
#[command(mut_arg("paths", |a| a.help(
    "Files or directories with CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, \
     NetworkPolicy and CiliumCIDRGroup manifests (`-` for stdin)"
)))]
pub struct ValidateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// What `validate` found, as the printers render it.
pub struct ValidateReport {
    pub names: Vec<String>,
    pub texts: Vec<String>,
    /// Sorted by file, then position.
    pub diagnostics: Vec<(FileId, Diagnostic)>,
    pub policies: usize,
    pub invalid: usize,
    pub errors: usize,
    pub warnings: usize,
}

pub fn run(args: ValidateArgs) -> u8 {
    let sources = match args.input.source().sources(StdinWording::Explained) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut names = Vec::new();
    let mut texts = Vec::new();
    let mut resources: Vec<(FileId, Resource)> = Vec::new();
    let mut diags: Vec<(FileId, Diagnostic)> = Vec::new();
    for (i, f) in sources.into_iter().enumerate() {
        let (res, d) = parse_resources(&f.text, Embedding::default());
        resources.extend(res.into_iter().map(|r| (i as FileId, r)));
        diags.extend(d.into_iter().map(|d| (i as FileId, d)));
        names.push(f.name);
        texts.push(f.text);
    }
    let set = PolicySet::build(&resources, &Options::default(), &Secrets::new());
    diags.extend(set.diagnostics().map(|(f, d)| (f, d.clone())));
    diags.sort_by_key(|(f, d)| (*f, d.span.map(|s| (s.line, s.col))));
    let count = |s: Severity| diags.iter().filter(|(_, d)| d.severity == s).count();
    let report = ValidateReport {
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        policies: set.policies.len(),
        invalid: set.policies.iter().filter(|p| !p.valid).count(),
        names,
        texts,
        diagnostics: diags,
    };
    match args.output {
        Output::Json => println!("{}", json::validate(&report)),
        Output::Text => text::validate(&mut std::io::stdout().lock(), &report),
    }
    u8::from(report.errors > 0)
}
