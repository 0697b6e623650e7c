//! Blob leases (Azure's Lease Blob; op version 3): the lock a data pipeline
//! takes so that one writer at a time changes a blob. The device keeps the
//! lease; a holder passes its id in the conditions of each write
//! ([`Conditions::with_lease`]) and in its uploads
//! ([`BlockUploader::under_lease`](super::BlockUploader::under_lease)).

use vmblob_protocol::ops::{
    Conditions, LeaseAction, LeaseBlob, LeaseDuration, LeaseId, LeaseResult, OpRequest, OpResponse,
};

use super::{BlobHandle, Data};
use crate::error::ClientError;

impl BlobHandle {
    /// Run one lease action under the blob's write conditions (ETag, time).
    /// A lease the action does not fit is [`BlobError::LeaseConflict`];
    /// a missing blob `BlobNotFound`.
    ///
    /// [`BlobError::LeaseConflict`]: vmblob_protocol::BlobError::LeaseConflict
    pub fn lease(&self, action: LeaseAction, conditions: Conditions) -> Result<LeaseResult, ClientError> {
        let op = OpRequest::LeaseBlob(LeaseBlob { target: self.target()?.clone(), action, conditions });
        match self.client().call(&op, Data::None)?.response {
            OpResponse::Lease(l) => Ok(l),
            r => Err(ClientError::unexpected(r)),
        }
    }

    /// Take the lease for `duration`, under `proposed_id` if given (else the
    /// device makes one up); its id.
    pub fn acquire_lease(&self, duration: LeaseDuration, proposed_id: Option<LeaseId>) -> Result<LeaseId, ClientError> {
        let l = self.lease(LeaseAction::Acquire { duration, proposed_id }, Conditions::none())?;
        l.lease_id.ok_or_else(|| ClientError::unexpected(OpResponse::Lease(l)))
    }

    /// Restart the lease's clock.
    pub fn renew_lease(&self, lease_id: LeaseId) -> Result<(), ClientError> {
        self.lease(LeaseAction::Renew { lease_id }, Conditions::none()).map(|_| ())
    }

    /// Give the held lease the id `proposed_id`.
    pub fn change_lease(&self, lease_id: LeaseId, proposed_id: LeaseId) -> Result<(), ClientError> {
        self.lease(LeaseAction::Change { lease_id, proposed_id }, Conditions::none()).map(|_| ())
    }

    /// Give the lease up.
    pub fn release_lease(&self, lease_id: LeaseId) -> Result<(), ClientError> {
        self.lease(LeaseAction::Release { lease_id }, Conditions::none()).map(|_| ())
    }

    /// Break the lease (anyone may); the seconds until it is broken.
    pub fn break_lease(&self, break_period_secs: Option<u32>) -> Result<u32, ClientError> {
        self.lease(LeaseAction::Break { break_period_secs }, Conditions::none()).map(|l| l.lease_time_secs)
    }
}
