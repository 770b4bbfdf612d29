//! runvm's knobs in the environment (`RUNVM_*`): how they are read, and the ones more
//! than one command reads.

use std::time::Duration;

/// A setting whose value does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} is not a valid {what}")]
pub struct InvalidSetting {
    pub var: &'static str,
    pub value: String,
    pub what: &'static str,
}

/// The number in `var`, or `default` when it is not set.
pub fn env_num<T: std::str::FromStr>(var: &'static str, default: T) -> Result<T, InvalidSetting> {
    match std::env::var(var) {
        Ok(v) => v.parse().map_err(|_| InvalidSetting {
            var,
            value: v,
            what: "number",
        }),
        Err(_) => Ok(default),
    }
}

/// How long the guest may take to boot (`RUNVM_BOOT_TIMEOUT`, seconds; 60).
pub fn boot_timeout() -> Result<Duration, InvalidSetting> {
    env_num("RUNVM_BOOT_TIMEOUT", 60).map(Duration::from_secs)
}

/// How a container's VM comes up (`RUNVM_BOOT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// The guest kernel boots, as on a machine that was switched on (`cold`).
    Cold,
    /// The VM is restored from a template snapshot (`warm`, the default; see
    /// `crate::template`); where no template can be had or restored, it boots cold with a
    /// warning.
    Warm,
}

/// `RUNVM_BOOT`: `warm` (the default) or `cold`.
pub fn boot_mode() -> Result<BootMode, InvalidSetting> {
    match std::env::var("RUNVM_BOOT") {
        Err(_) => Ok(BootMode::Warm),
        Ok(v) => match v.as_str() {
            "cold" => Ok(BootMode::Cold),
            "" | "warm" => Ok(BootMode::Warm),
            _ => Err(InvalidSetting {
                var: "RUNVM_BOOT",
                value: v,
                what: "boot mode (cold or warm)",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_gives_the_default_and_garbage_names_the_variable() {
        assert_eq!(env_num("RUNVM_TEST_SURELY_UNSET", 7u8).unwrap(), 7);
        std::env::set_var("RUNVM_TEST_SETTING_GARBAGE", "12x");
        assert_eq!(
            env_num::<u64>("RUNVM_TEST_SETTING_GARBAGE", 1)
                .unwrap_err()
                .to_string(),
            "RUNVM_TEST_SETTING_GARBAGE=\"12x\" is not a valid number"
        );
    }

    #[test]
    fn the_boot_mode_is_cold_or_warm_and_nothing_else() {
        std::env::remove_var("RUNVM_BOOT");
        assert_eq!(boot_mode().unwrap(), BootMode::Warm);
        std::env::set_var("RUNVM_BOOT", "cold");
        assert_eq!(boot_mode().unwrap(), BootMode::Cold);
        std::env::set_var("RUNVM_BOOT", "hot");
        assert_eq!(
            boot_mode().unwrap_err().to_string(),
            "RUNVM_BOOT=\"hot\" is not a valid boot mode (cold or warm)"
        );
        std::env::remove_var("RUNVM_BOOT");
    }
}
