//! What a family declares about itself, once, in its own file: the `model_type` names
//! it answers to, what its `config.json` means where it is silent, its own config
//! fields, where its classifier lives, and how to build it. The registry in `mod.rs`
//! lists the families; nothing else names one.

use anyhow::Result;

use super::classifier::{Classifier, HeadPolicy};
use super::config::{Config, Defaults};
use crate::layers::Loader;

/// One architecture family.
pub struct Family {
    /// The `model_type` values it runs, each with its name in words (for `info`).
    pub model_types: &'static [(&'static str, &'static str)],
    /// Its config defaults and field names.
    pub config: Defaults,
    /// Checks the config fields only this family reads, so that a config the family
    /// cannot run is refused when it is read (by `info` too), not at load.
    pub check: fn(&Config) -> Result<()>,
    /// The classifier's output layer (`weight` under it): whether a checkpoint has a
    /// trained head, without loading it.
    pub head: &'static str,
    /// Builds the classifier from a checkpoint.
    pub load: fn(Loader, &Config, HeadPolicy) -> Result<Box<dyn Classifier>>,
}

/// For families without config fields of their own.
pub fn no_check(_: &Config) -> Result<()> {
    Ok(())
}
