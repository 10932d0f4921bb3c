from router.auth import canonical_path


def test_every_spelling_of_admin_is_recognised() -> None:
    for path in [
        "/admin/status",
        "//admin/status",
        "/ADMIN/./status",
        "/x/../admin/routes",
        "/admin%2Fstatus",
        "/%2561dmin/x",
        "\\admin",
    ]:
        assert canonical_path(path).startswith("/admin"), path
    assert canonical_path("/v1/models") == "/v1/models"
