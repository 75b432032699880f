//! Generated code for the cpis v1 contract. Nothing here is written by hand
//! but the codec the generated code uses ([`codec`]): edit `proto/` and rebuild.

#![allow(clippy::all, missing_docs)]

pub mod codec;

/// `cpis.common.v1`: types shared by every service.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("cpis.common.v1");
    }
}

/// `cpis.registry.v1`: the register of plans.
pub mod registry {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("cpis.registry.v1");
    }
}

/// `cpis.attendance.v1`: check-in at settings.
pub mod attendance {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("cpis.attendance.v1");
    }
}

/// `cpis.notification.v1`: alerts to councils.
pub mod notification {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("cpis.notification.v1");
    }
}

/// The encoded `FileDescriptorSet` of the whole contract, for gRPC reflection
/// and for checking that every RPC has an authorization rule.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cpis_descriptor.bin"));

/// Every RPC of the contract as a gRPC path (`/package.Service/Method`).
pub fn all_rpc_paths() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set is generated at build time and always decodes");
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths
}
