//! Requests the reconciler asks an agent, and their answers, typed once.
//!
//! On the wire every request is the same frame, `Ask { requestId, kind, body }`, and every answer the same
//! `Answer { requestId, result: {"ok": answer} | {"error": message} }`. What varies is one type per request that
//! implements [`Request`]: its kind names it on the wire, its fields are the body, and its `Answer` type is what
//! comes back. The hub sends any `Request` and waits for its typed answer with one function (`Hub::ask`); the agent
//! matches the kind, reads the body with [`Ask::read`] and answers with [`Answer::new`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Action, BranchHead};

/// A question or command of the reconciler that one agent answers once.
///
/// A new request is one type, written here:
/// 1. a struct of what the agent needs (camelCase on the wire, like every frame);
/// 2. `impl Request for It { const KIND = "it"; type Answer = ...; }` (and `deployment` if it streams `Progress` and
///    `LogLine` frames of a deployment while it runs);
/// 3. one arm for `It::KIND` in the agent's `serve` (agent `connection.rs`) that reads it with `ask.read::<It>()`
///    and answers with `Answer::new::<It>(request_id, result)`.
///
/// The reconciler then calls `hub.ask(pick, It { .. }, deadline)` and gets an `It::Answer`. Neither the frames nor
/// the hub change, and an agent of an older release answers the new kind with an error that names it.
pub trait Request: Serialize + DeserializeOwned {
    /// The request's name on the wire, in an `Ask` frame's `kind`.
    const KIND: &'static str;
    /// What a successful answer carries.
    type Answer: Serialize + DeserializeOwned;

    /// The deployment this request runs, when it has one: while it waits, only the agent it went to may write
    /// into that deployment's stages and log.
    fn deployment(&self) -> Option<&str> {
        None
    }
}

/// An action with the deployment it belongs to. Answered with nothing, or with what went wrong in words a user can
/// act on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    pub action: Action,
}

impl Request for ActionRequest {
    const KIND: &'static str = "action";
    type Answer = ();

    fn deployment(&self) -> Option<&str> {
        self.deployment_id.as_deref()
    }
}

/// A question that changes nothing: the branches of a repository as its remote lists them (`git ls-remote`), for
/// the dashboard, `sdp get branches` and the sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListBranches {
    pub repo: String,
}

impl Request for ListBranches {
    const KIND: &'static str = "listBranches";
    type Answer = Vec<BranchHead>;
}

/// A request on the wire: its id, its kind, and its body (the request type's own JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ask {
    pub request_id: u64,
    pub kind: String,
    #[serde(default)]
    pub body: Value,
}

impl Ask {
    pub fn new<R: Request>(request_id: u64, request: &R) -> Ask {
        Ask {
            request_id,
            kind: R::KIND.to_string(),
            // Requests hold only strings, numbers and maps with string keys: serialising cannot fail.
            body: serde_json::to_value(request).unwrap_or_default(),
        }
    }

    /// The body as the request `R`; an error that names the kind and what is wrong with the body otherwise.
    pub fn read<R: Request>(&self) -> Result<R, String> {
        if self.kind != R::KIND {
            return Err(format!("a {:?} request is not a {:?} request", self.kind, R::KIND));
        }
        R::deserialize(&self.body).map_err(|e| format!("unreadable {} request: {e}", R::KIND))
    }

    /// What an agent answers to a kind it does not know: a newer reconciler of the same protocol version.
    pub fn unknown(&self) -> String {
        format!(
            "unknown request kind {:?}: this agent does not answer it; run the same SDP release on the reconciler \
             and every agent",
            self.kind
        )
    }
}

/// The answer to one `Ask`, with its request id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub request_id: u64,
    /// The request type's `Answer` as JSON, or what went wrong.
    #[serde(with = "outcome")]
    pub result: Result<Value, String>,
}

impl Answer {
    pub fn new<R: Request>(request_id: u64, result: Result<R::Answer, String>) -> Answer {
        Answer {
            request_id,
            // Answers hold only strings, numbers and maps with string keys: serialising cannot fail.
            result: result.map(|answer| serde_json::to_value(answer).unwrap_or_default()),
        }
    }
}

/// A successful answer's body as `R::Answer`; an error that names the kind and what is wrong otherwise.
pub fn read_answer<R: Request>(body: &Value) -> Result<R::Answer, String> {
    R::Answer::deserialize(body).map_err(|e| format!("unreadable answer to a {} request: {e}", R::KIND))
}

/// `Result<Value, String>` as `{"ok": value}` or `{"error": "message"}`, camelCase like the rest of the wire.
mod outcome {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    enum Borrowed<'a> {
        Ok(&'a Value),
        Error(&'a str),
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    enum Owned {
        Ok(Value),
        Error(String),
    }

    pub fn serialize<S: Serializer>(result: &Result<Value, String>, s: S) -> Result<S::Ok, S::Error> {
        match result {
            Ok(value) => Borrowed::Ok(value),
            Err(message) => Borrowed::Error(message),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Result<Value, String>, D::Error> {
        Ok(match Owned::deserialize(d)? {
            Owned::Ok(value) => Ok(value),
            Owned::Error(message) => Err(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentFrame, ReconcilerFrame, decode, encode};

    /// Sends `request` the way the hub does and reads it back the way the agent does.
    fn asked<R: Request>(request: &R) -> Ask {
        let text = encode(&ReconcilerFrame::Ask(Ask::new(7, request)));
        let Ok(ReconcilerFrame::Ask(ask)) = decode::<ReconcilerFrame>(&text) else {
            panic!("not an Ask: {text}")
        };
        ask
    }

    /// Answers `result` the way the agent does and reads it back the way the hub does.
    fn answered<R: Request>(result: Result<R::Answer, String>) -> Result<R::Answer, String> {
        let text = encode(&AgentFrame::Answer(Answer::new::<R>(7, result)));
        let Ok(AgentFrame::Answer(answer)) = decode::<AgentFrame>(&text) else {
            panic!("not an Answer: {text}")
        };
        assert_eq!(answer.request_id, 7);
        answer.result.and_then(|body| read_answer::<R>(&body))
    }

    #[test]
    fn every_request_and_its_answers_survive_the_wire() {
        let action = ActionRequest {
            deployment_id: Some("12".into()),
            action: Action::RemoveWorktree {
                sandbox: "a".into(),
                service: "account".into(),
            },
        };
        let ask = asked(&action);
        assert_eq!((ask.request_id, ask.kind.as_str()), (7, "action"));
        assert_eq!(ask.read::<ActionRequest>(), Ok(action.clone()));
        assert_eq!(action.deployment(), Some("12"));
        assert_eq!(answered::<ActionRequest>(Ok(())), Ok(()));
        let failed = "image alpine:3.20 is not loaded on micro-92".to_string();
        assert_eq!(answered::<ActionRequest>(Err(failed.clone())), Err(failed));

        let list = ListBranches { repo: "account".into() };
        let ask = asked(&list);
        assert_eq!(ask.read::<ListBranches>(), Ok(list.clone()));
        assert_eq!(list.deployment(), None);
        let heads = vec![BranchHead {
            repo: "account".into(),
            branch: "feature/login-error".into(),
            commit: "0123abc".into(),
        }];
        assert_eq!(answered::<ListBranches>(Ok(heads.clone())), Ok(heads));
        assert_eq!(answered::<ListBranches>(Ok(vec![])), Ok(vec![]));
        assert_eq!(
            answered::<ListBranches>(Err("git ls-remote failed".into())),
            Err("git ls-remote failed".into())
        );
    }

    #[test]
    fn the_wire_format_of_asks_and_answers() {
        let text = encode(&ReconcilerFrame::Ask(Ask::new(
            3,
            &ListBranches { repo: "account".into() },
        )));
        assert_eq!(
            text,
            r#"{"type":"ask","requestId":3,"kind":"listBranches","body":{"repo":"account"}}"#
        );
        let ok = encode(&AgentFrame::Answer(Answer::new::<ActionRequest>(3, Ok(()))));
        assert_eq!(ok, r#"{"type":"answer","requestId":3,"result":{"ok":null}}"#);
        let err = encode(&AgentFrame::Answer(Answer::new::<ActionRequest>(3, Err("no".into()))));
        assert_eq!(err, r#"{"type":"answer","requestId":3,"result":{"error":"no"}}"#);
    }

    #[test]
    fn an_unknown_kind_is_read_as_a_frame_and_refused_by_name() {
        let text = r#"{"type":"ask","requestId":5,"kind":"restartDocker","body":{"now":true}}"#;
        let Ok(ReconcilerFrame::Ask(ask)) = decode::<ReconcilerFrame>(text) else {
            panic!("an unknown kind must still decode as an Ask, so that the agent can answer it")
        };
        assert_eq!(ask.request_id, 5);
        let e = ask.read::<ActionRequest>().unwrap_err();
        assert_eq!(e, r#"a "restartDocker" request is not a "action" request"#);
        assert!(
            ask.unknown().contains(r#"unknown request kind "restartDocker""#),
            "{}",
            ask.unknown()
        );
    }

    #[test]
    fn a_malformed_body_or_answer_is_a_clear_error() {
        let no_repo: ReconcilerFrame =
            decode(r#"{"type":"ask","requestId":1,"kind":"listBranches","body":{"repo":5}}"#).unwrap();
        let ReconcilerFrame::Ask(ask) = no_repo else { panic!() };
        let e = ask.read::<ListBranches>().unwrap_err();
        assert!(
            e.starts_with("unreadable listBranches request: invalid type: integer `5`"),
            "{e}"
        );

        let missing: ReconcilerFrame = decode(r#"{"type":"ask","requestId":2,"kind":"action"}"#).unwrap();
        let ReconcilerFrame::Ask(ask) = missing else { panic!() };
        let e = ask.read::<ActionRequest>().unwrap_err();
        assert!(e.starts_with("unreadable action request:"), "{e}");

        let hostile = serde_json::json!({ "action": { "kind": "formatDisk", "sandbox": "a" } });
        let ask = Ask {
            request_id: 3,
            kind: "action".into(),
            body: hostile,
        };
        let e = ask.read::<ActionRequest>().unwrap_err();
        assert!(e.contains("unknown variant `formatDisk`"), "{e}");

        let e = read_answer::<ListBranches>(&serde_json::json!({ "branches": [] })).unwrap_err();
        assert!(e.starts_with("unreadable answer to a listBranches request:"), "{e}");
        // An answer without its result is not an answer.
        assert!(decode::<AgentFrame>(r#"{"type":"answer","requestId":3}"#).is_err());
        assert!(decode::<AgentFrame>(r#"{"type":"answer","requestId":3,"result":{"maybe":1}}"#).is_err());
    }
}
