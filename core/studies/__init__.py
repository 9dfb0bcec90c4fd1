"""The study store: DICOM ingest and storage, reports and their release, DICOMweb,
the patient's exam pages and the viewer."""


def routers() -> list:
    from core.studies import api, dicomweb, dicomweb_render, dicomweb_retrieve, dicomweb_store, routes, viewer
    from core.studies.exports import routes as exports

    return [routes.router, viewer.router, dicomweb.router, dicomweb_retrieve.router, dicomweb_render.router,
            dicomweb_store.router, api.router, exports.router]
