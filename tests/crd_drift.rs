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
    let crd = hector_operator::crd::crd();
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
        .map(|c| (c.name.as_str(), c.priority.unwrap_or(0)))
        .collect();
    assert_eq!(
        columns,
        [
            ("Ready", 0),
            ("Endpoints", 0),
            ("Version", 0),
            ("Age", 0),
            ("Type", 1),
            ("Address", 1),
            ("Reason", 1),
        ],
        "the last three only with -o wide"
    );
    let path = |name: &str| {
        v.additional_printer_columns
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .map(|c| c.json_path.clone())
    };
    assert_eq!(
        path("Ready").as_deref(),
        Some(".status.conditions[?(@.type==\"Ready\")].status")
    );
    assert_eq!(
        path("Endpoints").as_deref(),
        Some(".status.endpointsSummary")
    );
    // `kubectl scale` and HorizontalPodAutoscalers go through the scale subresource.
    let scale = v
        .subresources
        .as_ref()
        .and_then(|s| s.scale.as_ref())
        .expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
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
