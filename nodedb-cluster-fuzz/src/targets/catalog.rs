//! `catalog-record`: the catalog's record envelope and the bodies it owns, as read back from
//! its redb file (`nodedb-cluster-catalog/src/record.rs`), through the crate's fuzzing hooks.

use crate::{Target, Verdict, outcome};
use nodedb_cluster_catalog::fuzzing;

#[derive(Debug, Default)]
pub struct CatalogRecordTarget;

impl Target for CatalogRecordTarget {
    fn name(&self) -> &'static str {
        "catalog-record"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        fuzzing::record_seeds()
    }

    fn check(&mut self, input: &[u8]) -> Verdict {
        fuzzing::check_record(input).map(|label| outcome(&label))
    }
}
