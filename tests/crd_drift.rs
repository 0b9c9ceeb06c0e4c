//! The checked-in CRD must be exactly what the Rust types generate.

#[test]
fn crds_file_matches_the_types() {
    let generated = hector_operator::crd::crd_yaml().expect("render CRD");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/hectorplugin.yaml");
    let on_disk = std::fs::read_to_string(&path).expect("read crds/hectorplugin.yaml");
    assert!(
        generated == on_disk,
        "crds/hectorplugin.yaml is out of date: run `make crds`"
    );
}

#[test]
fn crd_has_the_promised_shape() {
    use kube::CustomResourceExt;
    let crd = hector_operator::crd::HectorPlugin::crd();
    assert_eq!(crd.spec.group, "hector.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["hp".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["hector".to_string()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Type", "Phase", "Address", "Age"]);
    // Every spec field carries a description for `kubectl explain`.
    let schema = serde_json::to_value(&v.schema).expect("schema json");
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for (field, s) in spec.as_object().expect("spec properties") {
        assert!(
            s.get("description")
                .and_then(|d| d.as_str())
                .is_some_and(|d| !d.is_empty()),
            "spec.{field} has no description"
        );
    }
}
