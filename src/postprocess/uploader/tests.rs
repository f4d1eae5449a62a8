use super::is_foreign;
use crate::db::outputs::NewOutput;

fn out(subfolder: &str) -> NewOutput {
    NewOutput {
        node_id: "9".into(),
        idx: 0,
        kind: "images".into(),
        filename: "x_00001_.png".into(),
        subfolder: subfolder.into(),
        folder_type: "output".into(),
        content_type: "image/png".into(),
        storage_key: "k".into(),
    }
}

#[test]
fn another_tasks_folder_is_foreign_and_unprefixed_files_are_not() {
    let me = "3f6d0a4e-0000-4000-8000-000000000001";
    assert!(!is_foreign(me, &out(&format!("comfyd/{me}"))));
    assert!(!is_foreign(me, &out(&format!("comfyd/{me}/sub"))));
    assert!(is_foreign(
        me,
        &out("comfyd/3f6d0a4e-0000-4000-8000-000000000002")
    ));
    assert!(!is_foreign(me, &out("")));
    assert!(!is_foreign(me, &out("batch")));
}
