//! Restore (issue 14). So far the pure planning core: which qubes of a set come back, under
//! which names, in which order, with their references to other qubes resolved (`plan`).
//! Listing the sets of a medium is `commands::restore`; creating and filling qubes is a later
//! step.

pub mod admin;
pub mod execute;
pub mod image;
pub mod plan;
#[cfg(test)]
mod tests;
