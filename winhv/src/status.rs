//! HV_STATUS: the result code of every hypercall.

use core::fmt;

/// A hypercall status code (HV_STATUS, bits 15:0 of the hypercall result value).
///
/// An open type: codes this crate does not name are still representable and printable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HvStatus(pub u16);

macro_rules! hv_statuses {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        impl HvStatus {
            $(
                #[doc = $text]
                pub const $name: Self = Self($value);
            )*

            /// The TLFS name of this status, if known.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// A short description of this status, if known.
            pub const fn description(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

hv_statuses! {
    SUCCESS = 0x0000, "the operation succeeded";
    INVALID_HYPERCALL_CODE = 0x0002, "the hypercall code is not recognised";
    INVALID_HYPERCALL_INPUT = 0x0003, "the hypercall input value is malformed (rep count, reserved bits, header size)";
    INVALID_ALIGNMENT = 0x0004, "a parameter block is misaligned, crosses a page or lies outside guest memory";
    INVALID_PARAMETER = 0x0005, "a parameter is invalid";
    ACCESS_DENIED = 0x0006, "the partition lacks the privilege for this operation";
    INVALID_PARTITION_STATE = 0x0007, "the partition is not in a valid state for this operation";
    OPERATION_DENIED = 0x0008, "the operation is not allowed";
    UNKNOWN_PROPERTY = 0x0009, "the property is unknown";
    PROPERTY_VALUE_OUT_OF_RANGE = 0x000A, "the property value is out of range";
    INSUFFICIENT_MEMORY = 0x000B, "not enough memory to complete the operation";
    PARTITION_TOO_DEEP = 0x000C, "the partition hierarchy is too deep";
    INVALID_PARTITION_ID = 0x000D, "the partition id is invalid";
    INVALID_VP_INDEX = 0x000E, "the virtual processor index is invalid";
    NOT_FOUND = 0x0010, "the object was not found";
    INVALID_PORT_ID = 0x0011, "the port id is invalid";
    INVALID_CONNECTION_ID = 0x0012, "the connection id is invalid";
    INSUFFICIENT_BUFFERS = 0x0013, "the target port has no free message buffer (transient; retry)";
    NOT_ACKNOWLEDGED = 0x0014, "the previous message was not acknowledged";
    INVALID_VP_STATE = 0x0015, "the virtual processor is not in a valid state";
    ACKNOWLEDGED = 0x0016, "the message was already acknowledged";
    INVALID_SAVE_RESTORE_STATE = 0x0017, "the save/restore state is invalid";
    INVALID_SYNIC_STATE = 0x0018, "the SynIC is not in a valid state for this operation";
    OBJECT_IN_USE = 0x0019, "the object is in use";
    INVALID_PROXIMITY_DOMAIN_INFO = 0x001A, "the proximity domain information is invalid";
    NO_DATA = 0x001B, "no data is available";
    INACTIVE = 0x001C, "the object is inactive";
    NO_RESOURCES = 0x001D, "no resources are available";
    FEATURE_UNAVAILABLE = 0x001E, "the feature is unavailable";
    PARTIAL_PACKET = 0x001F, "only part of the packet was transferred";
    PROCESSOR_FEATURE_NOT_SUPPORTED = 0x0020, "a processor feature is not supported";
    INSUFFICIENT_BUFFER = 0x0033, "the output buffer is too small";
    INVALID_REGISTER_VALUE = 0x0050, "the register value is invalid";
    INVALID_VTL_STATE = 0x0051, "the VTL state is invalid";
    OPERATION_FAILED = 0x0071, "the operation failed";
    TIMEOUT = 0x0078, "the rep hypercall stopped early; continue from the reps completed";
    CALL_PENDING = 0x0079, "the call is pending";
    VTL_ALREADY_ENABLED = 0x0086, "the VTL is already enabled";
    UNKNOWN_REGISTER_NAME = 0x0087, "the register name is unknown";
}

impl HvStatus {
    /// Whether the status reports success.
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }

    /// Whether the protocol treats this status as transient: retrying the same call later can
    /// succeed (a full message port, the hypervisor briefly out of memory — Linux retries
    /// HvCallPostMessage on both — or a rep call that ran out of its time budget).
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Self::INSUFFICIENT_BUFFERS | Self::INSUFFICIENT_MEMORY | Self::TIMEOUT
        )
    }

    /// `Ok(())` for success, the status as an error otherwise.
    pub const fn result(self) -> Result<(), HvError> {
        if self.is_success() {
            Ok(())
        } else {
            Err(HvError(self))
        }
    }
}

impl fmt::Debug for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "HV_STATUS_{name}"),
            None => write!(f, "HV_STATUS({:#06x})", self.0),
        }
    }
}

impl fmt::Display for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(text) => write!(f, "{text} ({:#06x})", self.0),
            None => write!(f, "unknown hypervisor status {:#06x}", self.0),
        }
    }
}

/// A hypercall that returned a status other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HvError(pub HvStatus);

impl HvError {
    /// The status the hypervisor returned.
    pub const fn status(self) -> HvStatus {
        self.0
    }

    /// See [`HvStatus::is_transient`].
    pub const fn is_transient(self) -> bool {
        self.0.is_transient()
    }
}

impl fmt::Display for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hypercall failed: {}", self.0)
    }
}

impl core::error::Error for HvError {}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use super::*;

    #[test]
    fn known_and_unknown_codes_print() {
        assert_eq!(
            format!("{:?}", HvStatus::ACCESS_DENIED),
            "HV_STATUS_ACCESS_DENIED"
        );
        assert!(format!("{}", HvStatus(0x12)).contains("connection id"));
        assert_eq!(format!("{:?}", HvStatus(0x7777)), "HV_STATUS(0x7777)");
        assert_eq!(
            format!("{}", HvStatus(0x7777)),
            "unknown hypervisor status 0x7777"
        );
        assert!(
            format!("{}", HvError(HvStatus::INVALID_ALIGNMENT)).starts_with("hypercall failed")
        );
    }

    #[test]
    fn transient_statuses() {
        assert!(HvStatus::INSUFFICIENT_BUFFERS.is_transient());
        assert!(!HvStatus::INVALID_CONNECTION_ID.is_transient());
        assert_eq!(HvStatus::SUCCESS.result(), Ok(()));
        assert_eq!(
            HvStatus(5).result(),
            Err(HvError(HvStatus::INVALID_PARAMETER))
        );
    }
}
