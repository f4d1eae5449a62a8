//! The memory that requests may hold at once, and handing it back to the OS after a burst.
//!
//! [`MemoryBudget`] is a byte semaphore shared by every HTTP worker (config `[limits]
//! in_flight_bytes`): a submit reserves its body (twice: the bytes and their parsed JSON) before it
//! reads it, and an image fetch reserves what it buffers as it arrives. The decoded images of a
//! base64 submit fit in what its body reserved, since decoding happens after the body's bytes are
//! dropped and base64 is a third larger than what it encodes. A reservation that cannot be had
//! within `in_flight_wait_ms` fails ([`BudgetError::Busy`], a 503 with Retry-After), so a burst
//! of large submits waits or is turned away instead of growing comfyd without limit.
//!
//! [`Reservation`]s release their bytes when dropped, at the end of the request. Freed, those
//! bytes go back to the OS at once: [`tune_allocator`] says why and what was measured.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in KiB, so that a budget of several GiB fits tokio's `u32` counts.
const UNIT: u64 = 1024;

/// A request's share could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// More than the whole budget: it can never be had (413).
    #[error(
        "needs {needed} bytes in memory, more than the {total} bytes all requests may hold at once"
    )]
    TooLarge {
        /// Bytes the request would hold.
        needed: u64,
        /// The whole budget.
        total: u64,
    },
    /// Other requests hold the budget; retrying shortly may succeed (503).
    #[error("comfyd is holding as many request bytes as it may; retry shortly")]
    Busy,
}

/// Bytes that requests may hold at once. Cheap to clone; every clone shares the same budget.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total_units: u64,
    wait: Duration,
}

impl MemoryBudget {
    /// A budget of `total_bytes` (rounded down to KiB); a reservation waits up to `wait` for room.
    pub fn new(total_bytes: u64, wait: Duration) -> MemoryBudget {
        let total_units = (total_bytes / UNIT).min(Semaphore::MAX_PERMITS as u64);
        MemoryBudget {
            // `as usize`: at most MAX_PERMITS, which is a usize.
            semaphore: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            wait,
        }
    }

    /// The whole budget, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_units * UNIT
    }

    /// Bytes not reserved right now.
    pub fn available_bytes(&self) -> u64 {
        self.semaphore.available_permits() as u64 * UNIT
    }

    /// A reservation of nothing yet, to [`Reservation::grow`].
    pub fn empty(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            permit: None,
            units: 0,
        }
    }

    /// Reserves `bytes`, waiting up to the budget's wait for room.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, BudgetError> {
        let mut reservation = self.empty();
        reservation.grow(bytes).await?;
        Ok(reservation)
    }
}

/// Bytes held by one request; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: MemoryBudget,
    permit: Option<OwnedSemaphorePermit>,
    units: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.units * UNIT
    }

    /// Holds `bytes` more, waiting up to the budget's wait for room. On failure what was held
    /// stays held (the caller usually drops the whole reservation with its request).
    pub async fn grow(&mut self, bytes: u64) -> Result<(), BudgetError> {
        let add = bytes.div_ceil(UNIT);
        if add == 0 {
            return Ok(());
        }
        let total = self.budget.total_units;
        if self.units.saturating_add(add) > total {
            return Err(BudgetError::TooLarge {
                needed: self.bytes().saturating_add(bytes),
                total: self.budget.total_bytes(),
            });
        }
        // `as u32`: add <= total <= MAX_PERMITS < 2^32 (tokio's limit is usize::MAX >> 3 on 32-bit
        // targets, and u32 counts are what acquire_many takes everywhere).
        let add32 = u32::try_from(add).map_err(|_| BudgetError::TooLarge {
            needed: bytes,
            total: self.budget.total_bytes(),
        })?;
        let acquire = self.budget.semaphore.clone().acquire_many_owned(add32);
        let permit = match tokio::time::timeout(self.budget.wait, acquire).await {
            Ok(Ok(permit)) => permit,
            // Timed out, or closed (never done: the semaphore lives as long as the budget).
            Ok(Err(_)) | Err(_) => return Err(BudgetError::Busy),
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.units += add;
        Ok(())
    }
}

/// Blocks at least this large are mapped on their own (and unmapped when freed); see
/// [`tune_allocator`].
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Makes glibc map each block of [`MMAP_THRESHOLD`] or more on its own, so that freeing it returns
/// it to the OS at once.
///
/// Why: by default glibc raises its mmap threshold to the size of the largest block freed (up to
/// 32 MiB) and its trim threshold to twice that, so after the first large body, later ones are
/// carved from the heap arenas and stay resident once freed, in the arenas' top chunks that even
/// `malloc_trim` leaves alone. Measured with the burst test (src/tests/battery.rs: eight 32 MB
/// submits and the other worst inputs at once; debug build; idle RSS 35 MiB, peak 146 to 159 MiB
/// whatever the setting), RSS 10 s after the burst: glibc's defaults 115 MiB; `malloc_trim(0)`
/// once the budget is idle, 37 to 115 MiB (it cannot reach the top chunks); this threshold,
/// 38.8, 39.2 and 39.6 MiB in three runs, with nothing to do after the burst. Setting it also
/// turns the dynamic adjustment off, which keeps the trim threshold at its 128 KiB default. Only
/// blocks of 4 MiB or more pay an mmap and munmap: request bodies and images, never the small
/// allocations of a job's usual path. mimalloc was measured for comfyd before (BENCHMARKS.md,
/// rounds 6 and 7): no CPU gain natively and a higher peak RSS, so glibc stays, as the
/// benchmarks were taken with it.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's own parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_share_the_budget_and_release_it_when_dropped() {
        let budget = MemoryBudget::new(10 * UNIT, Duration::from_millis(20));
        let a = budget.reserve(6 * UNIT).await.expect("room for a");
        assert_eq!(budget.available_bytes(), 4 * UNIT);
        assert_eq!(
            budget.reserve(5 * UNIT).await.err(),
            Some(BudgetError::Busy)
        );
        let mut b = budget
            .reserve(1)
            .await
            .expect("a partial KiB counts as one");
        assert_eq!(b.bytes(), UNIT);
        b.grow(3 * UNIT).await.expect("grows into what is left");
        assert_eq!(budget.available_bytes(), 0);
        drop(a);
        drop(b);
        assert_eq!(budget.available_bytes(), 10 * UNIT);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_too_large_at_once() {
        let budget = MemoryBudget::new(10 * UNIT, Duration::from_secs(60));
        let mut r = budget.reserve(8 * UNIT).await.expect("fits");
        assert_eq!(
            r.grow(3 * UNIT).await,
            Err(BudgetError::TooLarge {
                needed: 11 * UNIT,
                total: 10 * UNIT
            })
        );
        assert_eq!(r.bytes(), 8 * UNIT, "what was held stays held");
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_the_bytes_another_one_releases() {
        let budget = MemoryBudget::new(4 * UNIT, Duration::from_secs(5));
        let held = budget.reserve(4 * UNIT).await.expect("all of it");
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 * UNIT).await.map(|r| r.bytes()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert_eq!(waiter.await.expect("join"), Ok(2 * UNIT));
    }
}
