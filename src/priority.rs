//! Thread priority: the delivery threads (routing, mapping, sending) run
//! at a higher nice value than the intake's, so that when the cores are
//! full a sender's message is committed and answered first, and delivery
//! takes the time that is left. What waits, waits in the journal.
//!
//! On Linux the nice value belongs to each thread (see `setpriority(2)`,
//! "Bugs"), and a thread starts with its creator's. The value is set, not
//! added to, on every delivery thread: one started by another (a blocking
//! pool's) is not lowered twice. Raising a nice value needs no privilege.

/// A nice value for threads: the calling thread's, raised by some steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nice(i32);

/// The highest nice value (the lowest priority).
const LOWEST: i32 = 19;

impl Nice {
    /// The calling thread's nice value plus `steps`, at most 19.
    pub fn this_thread_plus(steps: u8) -> std::io::Result<Nice> {
        Ok(Nice((this_thread()? + i32::from(steps)).min(LOWEST)))
    }

    /// Gives the calling thread this nice value.
    pub fn apply(self) -> std::io::Result<()> {
        set_this_thread(self.0)
    }

    pub fn value(self) -> i32 {
        self.0
    }
}

#[cfg(target_os = "linux")]
fn this_thread() -> std::io::Result<i32> {
    // `getpriority` can return -1 on success: errno tells (cleared first).
    // SAFETY: reads and writes the calling thread's own errno; `who` 0 is
    // the calling thread on Linux.
    let (value, error) = unsafe {
        *libc::__errno_location() = 0;
        let v = libc::getpriority(libc::PRIO_PROCESS, 0);
        (v, *libc::__errno_location())
    };
    if value == -1 && error != 0 {
        return Err(std::io::Error::from_raw_os_error(error));
    }
    Ok(value)
}

#[cfg(target_os = "linux")]
fn set_this_thread(value: i32) -> std::io::Result<()> {
    // SAFETY: changes the calling thread's scheduling attributes only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, value) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// Elsewhere the nice value is the whole process's: nothing is changed.
#[cfg(not(target_os = "linux"))]
fn this_thread() -> std::io::Result<i32> {
    Ok(0)
}

#[cfg(not(target_os = "linux"))]
fn set_this_thread(_value: i32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::Nice;

    /// The nice value of the calling thread, from /proc.
    fn nice_of_this_thread() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Field 19, counted after the command name's closing parenthesis.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_lowered_thread_and_the_threads_it_starts_share_one_value() {
        let before = nice_of_this_thread();
        let nice = Nice::this_thread_plus(3).unwrap();
        assert_eq!(nice.value(), (before + 3).min(19));
        let seen = std::thread::spawn(move || {
            nice.apply().unwrap();
            let own = nice_of_this_thread();
            // A thread it starts inherits the value; applying it again
            // does not lower it further.
            let child = std::thread::spawn(move || {
                nice.apply().unwrap();
                nice_of_this_thread()
            })
            .join()
            .unwrap();
            (own, child)
        })
        .join()
        .unwrap();
        assert_eq!(seen, (nice.value(), nice.value()));
        assert_eq!(nice_of_this_thread(), before, "the caller was lowered too");
        assert_eq!(Nice::this_thread_plus(200).unwrap().value(), 19);
    }
}
