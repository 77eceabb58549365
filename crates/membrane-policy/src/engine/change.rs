//! What one change did to the resolved policies: per shared policy (subject), the endpoints
//! using it and the map entries added and removed in each direction.

use crate::model::Direction;
use crate::resolve::MapDelta;

/// One subject's (one shared resolved policy's) change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectChange {
    pub subject: usize,
    /// The endpoints using this policy (ids from [`super::Engine::add_endpoint`]).
    pub endpoints: std::sync::Arc<Vec<super::EndpointId>>,
    pub ingress: MapDelta,
    pub egress: MapDelta,
    /// A direction went from not enforced to enforced or back.
    pub enforcement_changed: bool,
}

impl SubjectChange {
    pub(super) fn new(subject: usize) -> Self {
        SubjectChange {
            subject,
            ..Default::default()
        }
    }

    pub fn delta(&self, d: Direction) -> &MapDelta {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub(super) fn delta_mut(&mut self, d: Direction) -> &mut MapDelta {
        match d {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty() && self.egress.is_empty() && !self.enforcement_changed
    }
}

/// The answer to one change: the new revision and what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub revision: u64,
    /// Policies whose maps changed (only policies already computed are followed).
    pub subjects: Vec<SubjectChange>,
    /// Endpoints added, with the subject whose policy they use.
    pub endpoints_added: Vec<(super::EndpointId, usize)>,
    pub endpoints_removed: Vec<(super::EndpointId, usize)>,
    /// Policies no endpoint uses any more (their index may be reused later).
    pub subjects_removed: Vec<usize>,
}

impl ChangeSet {
    pub(super) fn merge(&mut self, other: ChangeSet) {
        self.subjects.extend(other.subjects);
        self.endpoints_added.extend(other.endpoints_added);
        self.endpoints_removed.extend(other.endpoints_removed);
        self.subjects_removed.extend(other.subjects_removed);
    }

    /// Folds successive changes of one subject into one (later deltas win per key).
    pub(super) fn normalize(&mut self) {
        let mut out: Vec<SubjectChange> = Vec::new();
        for c in std::mem::take(&mut self.subjects) {
            match out.iter_mut().find(|o| o.subject == c.subject) {
                Some(o) => {
                    o.ingress.fold(c.ingress);
                    o.egress.fold(c.egress);
                    o.enforcement_changed |= c.enforcement_changed;
                    o.endpoints = c.endpoints;
                }
                None => out.push(c),
            }
        }
        out.retain(|c| !c.is_empty());
        out.sort_by_key(|c| c.subject);
        self.subjects = out;
    }

    /// This change followed by a later one, as one change set (the later revision).
    pub fn then(&mut self, later: ChangeSet) {
        self.revision = later.revision;
        self.merge(later);
        self.normalize();
    }

    /// Map entries added and removed over every subject.
    pub fn entry_count(&self) -> (usize, usize) {
        self.subjects.iter().fold((0, 0), |(a, r), c| {
            (
                a + c.ingress.added().len() + c.egress.added().len(),
                r + c.ingress.removed().len() + c.egress.removed().len(),
            )
        })
    }
}
