//! Device classes: the interface-type GUIDs in OFFERCHANNEL @8 (devices §1).

#![forbid(unsafe_code)]

use super::Guid;

/// What kind of synthetic device or integration service an offer is, from its interface type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceClass {
    /// Synthetic network adapter (netvsc).
    Network,
    /// Synthetic SCSI controller (storvsc).
    Scsi,
    /// Accelerated IDE controller (served by storvsc).
    Ide,
    /// Synthetic Fibre Channel (storvsc).
    FibreChannel,
    /// Synthetic video (synthvid).
    Video,
    /// Synthetic keyboard.
    Keyboard,
    /// Synthetic mouse (HID).
    Mouse,
    /// Heartbeat integration service.
    Heartbeat,
    /// Key-value pair exchange integration service.
    Kvp,
    /// Shutdown integration service.
    Shutdown,
    /// Time synchronisation integration service.
    TimeSync,
    /// Volume shadow copy (backup) integration service.
    Vss,
    /// Guest file copy service.
    FileCopy,
    /// Dynamic memory (balloon).
    Balloon,
    /// Virtual PCI pass-through bus.
    Pci,
    /// NetworkDirect (RDMA).
    NetworkDirect,
    /// Remote desktop virtualisation (no guest driver).
    Rdv,
    /// Automatic VM activation, channel 1.
    Avma1,
    /// Automatic VM activation, channel 2.
    Avma2,
    /// Initial machine configuration.
    Imc,
    /// A hvsock connection (recognised by the TLNPI offer flag, not by a class GUID).
    Hvsock,
    /// Any interface type not in [`DEVICE_CLASSES`].
    Unknown,
}

const fn g(s: &str) -> Guid {
    Guid::from_str_const(s)
}

/// Known interface-type GUIDs with their class and a short name (Linux / devices.md §1).
pub const DEVICE_CLASSES: &[(Guid, DeviceClass, &str)] = &[
    (
        g("f8615163-df3e-46c5-913f-f2d2f965ed0e"),
        DeviceClass::Network,
        "netvsc",
    ),
    (
        g("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"),
        DeviceClass::Scsi,
        "scsi",
    ),
    (
        g("32412632-86cb-44a2-9b5c-50d1417354f5"),
        DeviceClass::Ide,
        "ide",
    ),
    (
        g("2f9bcc4a-0069-4af3-b76b-6fd0be528cda"),
        DeviceClass::FibreChannel,
        "synthfc",
    ),
    (
        g("da0a7802-e377-4aac-8e77-0558eb1073f8"),
        DeviceClass::Video,
        "synthvid",
    ),
    (
        g("f912ad6d-2b17-48ea-bd65-f927a61c7684"),
        DeviceClass::Keyboard,
        "keyboard",
    ),
    (
        g("cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a"),
        DeviceClass::Mouse,
        "mouse",
    ),
    (
        g("57164f39-9115-4e78-ab55-382f3bd5422d"),
        DeviceClass::Heartbeat,
        "heartbeat",
    ),
    (
        g("a9a0f4e7-5a45-4d96-b827-8a841e8c03e6"),
        DeviceClass::Kvp,
        "kvp",
    ),
    (
        g("0e0b6031-5213-4934-818b-38d90ced39db"),
        DeviceClass::Shutdown,
        "shutdown",
    ),
    (
        g("9527e630-d0ae-497b-adce-e80ab0175caf"),
        DeviceClass::TimeSync,
        "timesync",
    ),
    (
        g("35fa2e29-ea23-4236-96ae-3a6ebacba440"),
        DeviceClass::Vss,
        "vss",
    ),
    (
        g("34d14be3-dee4-41c8-9ae7-6b174977c192"),
        DeviceClass::FileCopy,
        "fcopy",
    ),
    (
        g("525074dc-8985-46e2-8057-a307dc18a502"),
        DeviceClass::Balloon,
        "balloon",
    ),
    (
        g("44c4f61d-4444-4400-9d52-802e27ede19f"),
        DeviceClass::Pci,
        "pci",
    ),
    (
        g("8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501"),
        DeviceClass::NetworkDirect,
        "nd",
    ),
    (
        g("276aacf4-ac15-426c-98dd-7521ad3f01fe"),
        DeviceClass::Rdv,
        "rdv",
    ),
    (
        g("f8e65716-3cb3-4a06-9a60-1889c5cccab5"),
        DeviceClass::Avma1,
        "avma1",
    ),
    (
        g("3375baf4-9e15-4b30-b765-67acb10d607b"),
        DeviceClass::Avma2,
        "avma2",
    ),
    (
        g("c376c1c3-d276-48d2-90a9-c04748072c60"),
        DeviceClass::Imc,
        "imc",
    ),
];

impl DeviceClass {
    /// Class of an offer's interface type GUID; [`DeviceClass::Unknown`] if not listed. (A
    /// hvsock offer's interface type is a service id: check the offer flags first.)
    pub fn from_interface_type(guid: &Guid) -> DeviceClass {
        DEVICE_CLASSES
            .iter()
            .find(|(g, _, _)| g == guid)
            .map_or(DeviceClass::Unknown, |&(_, c, _)| c)
    }

    /// Interface type GUID of this class, if it has a fixed one.
    pub fn interface_type(self) -> Option<Guid> {
        DEVICE_CLASSES
            .iter()
            .find(|(_, c, _)| *c == self)
            .map(|&(g, _, _)| g)
    }

    /// Short name of this class ("netvsc", "heartbeat", …).
    pub fn short_name(self) -> &'static str {
        match self {
            DeviceClass::Hvsock => "hvsock",
            DeviceClass::Unknown => "unknown",
            _ => DEVICE_CLASSES
                .iter()
                .find(|(_, c, _)| *c == self)
                .map_or("unknown", |&(_, _, n)| n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_round_trips_and_is_unique() {
        for (i, (g, c, _)) in DEVICE_CLASSES.iter().enumerate() {
            assert_eq!(DeviceClass::from_interface_type(g), *c);
            assert_eq!(c.interface_type(), Some(*g));
            assert!(
                DEVICE_CLASSES[i + 1..]
                    .iter()
                    .all(|(g2, c2, _)| g2 != g && c2 != c)
            );
        }
        assert_eq!(
            DeviceClass::from_interface_type(&Guid::ZERO),
            DeviceClass::Unknown
        );
        assert_eq!(DeviceClass::Network.short_name(), "netvsc");
        assert_eq!(DeviceClass::Hvsock.interface_type(), None);
    }
}
