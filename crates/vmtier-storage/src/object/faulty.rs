//! [`FaultyObjectStore`]: an [`ObjectStore`] around a real one that injects the faults of a
//! [`FaultPlan`] (see [`crate::fault`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::fault::{Fault, FaultKind, FaultPlan, Op};

type Fut<'a, T> = Pin<Box<dyn Future<Output = object_store::Result<T>> + Send + 'a>>;

/// An [`ObjectStore`] that forwards to `inner` and injects the faults of a [`FaultPlan`]
/// (the key is the object's path):
///
/// | fault        | PUT (`Op::Write`)                          | GET (`Op::Read`)                         | LIST, DELETE       |
/// |--------------|--------------------------------------------|------------------------------------------|--------------------|
/// | `Eio`, `Enospc`, `ShortWrite` | error, nothing stored       | error                                    | error              |
/// | `EioAfter`   | stored, then an error (a lost response)    | error                                    | done, then error   |
/// | `Delay(d)`   | waits `d` (async), then runs              | the same                                 | the same           |
/// | `FlipBit`    | stores the payload with one bit flipped    | returns the bytes with one bit flipped   | no fault           |
///
/// Multipart uploads and copies pass through unchanged.
pub struct FaultyObjectStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyObjectStore {
    /// Wraps `inner` with the faults of `plan`.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }
}

impl fmt::Debug for FaultyObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyObjectStore").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl fmt::Display for FaultyObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyObjectStore({})", self.inner)
    }
}

fn injected(f: &Fault) -> object_store::Error {
    object_store::Error::Generic { store: "FaultyObjectStore", source: Box::new(f.io_error()) }
}

async fn delay(f: &Fault) {
    if let FaultKind::Delay(d) = f.kind {
        tokio::time::sleep(d).await;
    }
}

impl ObjectStore for FaultyObjectStore {
    fn put_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Fut<'c, PutResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            let Some(f) = self.plan.check(Op::Write, location.as_ref()) else {
                return self.inner.put_opts(location, payload, opts).await;
            };
            match f.kind {
                FaultKind::Delay(_) => {
                    delay(&f).await;
                    self.inner.put_opts(location, payload, opts).await
                }
                FaultKind::FlipBit => {
                    let mut data: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
                    f.flip(&mut data);
                    self.inner.put_opts(location, PutPayload::from(data), opts).await
                }
                FaultKind::EioAfter => {
                    self.inner.put_opts(location, payload, opts).await?;
                    Err(injected(&f))
                }
                FaultKind::Eio | FaultKind::Enospc | FaultKind::ShortWrite => Err(injected(&f)),
            }
        })
    }

    fn put_multipart_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b ObjPath,
        opts: PutMultipartOptions,
    ) -> Fut<'c, Box<dyn MultipartUpload>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_multipart_opts(location, opts)
    }

    fn get_opts<'a, 'b, 'c>(&'a self, location: &'b ObjPath, options: GetOptions) -> Fut<'c, GetResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            let Some(f) = self.plan.check(Op::Read, location.as_ref()) else {
                return self.inner.get_opts(location, options).await;
            };
            match f.kind {
                FaultKind::Delay(_) => {
                    delay(&f).await;
                    self.inner.get_opts(location, options).await
                }
                FaultKind::FlipBit => {
                    let r = self.inner.get_opts(location, options).await?;
                    let GetResult { payload, meta, range, attributes, extensions } = r;
                    let whole = GetResult {
                        payload,
                        meta: meta.clone(),
                        range: range.clone(),
                        attributes: attributes.clone(),
                        extensions: Default::default(),
                    };
                    let mut data = whole.bytes().await?.to_vec();
                    f.flip(&mut data);
                    let stream = futures::stream::once(async move { Ok(Bytes::from(data)) }).boxed();
                    Ok(GetResult { payload: GetResultPayload::Stream(stream), meta, range, attributes, extensions })
                }
                _ => Err(injected(&f)),
            }
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        let plan = Arc::clone(&self.plan);
        let inner = Arc::clone(&self.inner);
        // One path at a time, its fate decided before the real delete.
        locations
            .then(move |r| {
                let (plan, inner) = (Arc::clone(&plan), Arc::clone(&inner));
                async move {
                    let p = r?;
                    let fault = plan.check(Op::Delete, p.as_ref());
                    if let Some(f) = &fault {
                        delay(f).await;
                        if matches!(f.kind, FaultKind::Eio | FaultKind::Enospc | FaultKind::ShortWrite) {
                            return Err(injected(f));
                        }
                    }
                    let one = futures::stream::once(async move { Ok(p) }).boxed();
                    let done = inner.delete_stream(one).next().await.unwrap_or_else(|| {
                        Err(object_store::Error::Generic {
                            store: "FaultyObjectStore",
                            source: "the inner store answered nothing to a delete".into(),
                        })
                    })?;
                    match fault {
                        Some(f) if f.kind == FaultKind::EioAfter => Err(injected(&f)),
                        _ => Ok(done),
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.plan.check(Op::List, &key) {
            Some(f) if !matches!(f.kind, FaultKind::Delay(_) | FaultKind::FlipBit) => {
                futures::stream::once(async move { Err(injected(&f)) }).boxed()
            }
            Some(f) => {
                let inner = self.inner.list(prefix);
                futures::stream::once(async move { delay(&f).await })
                    .map(|()| futures::stream::empty())
                    .flatten()
                    .chain(inner)
                    .boxed()
            }
            None => self.inner.list(prefix),
        }
    }

    fn list_with_delimiter<'a, 'b, 'c>(&'a self, prefix: Option<&'b ObjPath>) -> Fut<'c, ListResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            let key = prefix.map(|p| p.to_string()).unwrap_or_default();
            match self.plan.check(Op::List, &key) {
                Some(f) if !matches!(f.kind, FaultKind::Delay(_) | FaultKind::FlipBit) => Err(injected(&f)),
                Some(f) => {
                    delay(&f).await;
                    self.inner.list_with_delimiter(prefix).await
                }
                None => self.inner.list_with_delimiter(prefix).await,
            }
        })
    }

    fn copy_opts<'a, 'b, 'c, 'd>(&'a self, from: &'b ObjPath, to: &'c ObjPath, options: CopyOptions) -> Fut<'d, ()>
    where
        'a: 'd,
        'b: 'd,
        'c: 'd,
        Self: 'd,
    {
        self.inner.copy_opts(from, to, options)
    }
}
