//! JSON Schemas of the Fondo payloads the bridge publishes: one per Fondo object (`account`,
//! `order`, ...) and one per event type (`order.create`), as AsyncAPI `components.schemas`.
//!
//! The account object is the one Fondo's reference documents; the other objects follow the samples
//! in `tests/fixtures/fondo/` and the simulator (`src/simulator/generator.rs`), which are assumed
//! shapes, so they describe their fields without requiring any. Every object allows fields not
//! listed (Fondo may add some; the simulator adds `seq`, and `padding` at the top level). What an
//! event type requires follows its action: `create` and `update` carry `current`, `delete` carries
//! `previous`; `previous` of an update is described but optional (the first update of an object
//! Fondo never announced with a create has none).

use serde_json::{Map, Value, json};

/// The Fondo objects with a schema, by the entity part of their event types.
pub use crate::event::ENTITIES;

/// The marker event the WebSocket source publishes after a reconnect (`gap_marker: true`).
pub const GAP_MARKER_TYPE: &str = "bridge.gap";

/// How the payload schemas of one document are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaOptions {
    /// Whether every body carries `eventType`. Not when the webhook source takes the type from a
    /// header (`event_type_header`): such a body is published as it came, without one.
    pub event_type_required: bool,
}

/// The `components.schemas` key of the payload schema of event types no schema describes.
pub const OTHER_EVENT_SCHEMA: &str = "fondoEvent";

/// Whether [`event_schema`] has a specific schema for this event type (else [`other_event`]).
pub fn is_described(event_type: &str) -> bool {
    event_type == "heartbeat"
        || event_type == GAP_MARKER_TYPE
        || crate::event::KNOWN_EVENT_TYPES.contains(&event_type)
}

/// The schema of one Fondo object (`account`, `order`, ...), or `None` for an unknown entity.
pub fn object_schema(entity: &str) -> Option<Value> {
    let s = |d: &str| json!({ "type": "string", "description": d });
    let num = |d: &str| json!({ "type": "number", "description": d });
    let id = json!({ "type": ["string", "integer"], "description": "The object's id: the default message key." });
    let client_id = s("The Fondo client the object belongs to.");
    let seq = json!({ "type": "integer", "minimum": 1, "description": "Version of the object (the simulator's; Fondo's objects carry none)." });
    let date = |d: &str| json!({ "type": ["string", "null"], "description": d });
    let (description, properties, required): (&str, Value, &[&str]) = match entity {
        "account" => (
            "An account, as Fondo's reference documents it.",
            account_properties(),
            &["ref"],
        ),
        "client" => (
            "A client (assumed shape: Fondo's reference does not document it).",
            json!({
                "id": id, "clientId": client_id, "firstName": s("Given name."), "lastName": s("Family name."),
                "status": s("e.g. onboarding, active, review."),
                "riskProfile": { "type": "integer", "description": "Risk class." },
                "email": s("E-mail address."), "seq": seq,
            }),
            &[],
        ),
        "cashTransaction" => (
            "A cash transaction: a deposit, a withdrawal or the cash leg of a fund order (assumed shape).",
            json!({
                "id": id, "accountRef": s("The account's ref."), "clientId": client_id,
                "type": s("e.g. deposit, withdrawal."), "amount": num("Amount in `currency`."),
                "currency": s("ISO 4217 code."), "status": s("e.g. pending, booked, settled."),
                "transactionDate": date("Transaction date."), "settlementDate": date("Settlement date."),
                "seq": seq,
            }),
            &[],
        ),
        "fundTransaction" => (
            "A fund transaction: units moved by a subscription or a redemption (assumed shape).",
            json!({
                "id": id, "accountRef": s("The account's ref."), "clientId": client_id,
                "type": s("e.g. subscription, redemption."), "instrument": s("The fund's ISIN."),
                "units": num("Units moved."), "price": num("Price per unit."), "amount": num("Amount in `currency`."),
                "currency": s("ISO 4217 code."), "status": s("e.g. pending, booked, settled."),
                "tradeDate": date("Trade date."), "settlementDate": date("Settlement date."), "seq": seq,
            }),
            &[],
        ),
        "order" => (
            "A fund order (assumed shape).",
            json!({
                "id": id, "accountRef": s("The account's ref."), "clientId": client_id,
                "instrument": s("The fund's ISIN."), "side": s("buy or sell."), "amount": num("Amount in `currency`."),
                "currency": s("ISO 4217 code."), "status": s("e.g. received, placed, executed, settled."),
                "tradeDate": date("Trade date, once traded."), "settlementDate": date("Settlement date, once settled."),
                "createdDate": date("When the order was created."), "seq": seq,
            }),
            &[],
        ),
        "journey" => (
            "A client journey such as onboarding (assumed shape).",
            json!({
                "id": id, "clientId": client_id, "type": s("e.g. onboarding."),
                "step": s("e.g. started, kyc, signing, funding, completed."),
                "updatedDate": date("When the journey last moved."), "seq": seq,
            }),
            &[],
        ),
        "instrument" => (
            "A reloaded instrument (assumed shape).",
            json!({
                "id": id, "name": s("Name."), "currency": s("ISO 4217 code."),
                "nav": num("Net asset value."), "navDate": date("Date of `nav`."), "seq": seq,
            }),
            &[],
        ),
        _ => return None,
    };
    let mut schema = json!({
        "type": "object",
        "description": description,
        "properties": properties,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    Some(schema)
}

fn account_properties() -> Value {
    let s = |d: &str| json!({ "type": "string", "description": d });
    let num = |d: &str| json!({ "type": "number", "description": d });
    let when =
        |d: &str| json!({ "type": ["string", "null"], "format": "date-time", "description": d });
    json!({
        "ref": s("The account's id, e.g. \"160367146695159\": the default message key."),
        "name": s("Display name."),
        "status": s("e.g. pending, active."),
        "accountType": s("e.g. isk."),
        "serviceType": s("e.g. portfolioManagement."),
        "owner": {
            "type": "object",
            "properties": {
                "firstName": s("Given name."),
                "lastName": s("Family name."),
                "fullName": s("Full name."),
                "ssn": s("Swedish personal identity number: personal data (routes may redact it)."),
            },
        },
        "balance": num("Balance in `currency`."),
        "amounts": {
            "type": "object",
            "properties": { "deposited": num("Deposited in total."), "withdrawn": num("Withdrawn in total.") },
        },
        "positions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "instrument": s("ISIN."), "units": num("Units held."), "unitsSettled": num("Units settled."),
                    "value": num("Market value."), "closePrice": num("Last close price."), "gav": num("Average acquisition value."),
                },
            },
        },
        "deleted": { "type": "boolean" },
        "clientId": s("The Fondo client the account belongs to."),
        "bankAccounts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "iban": s("IBAN."), "bban": s("BBAN."), "bank": s("Bank name."), "name": s("Account name."),
                    "createdDate": when("Created."), "modifiedDate": when("Last modified."),
                    "deletedDate": when("Deleted, or null."), "validated": { "type": "boolean" },
                },
            },
        },
        "currency": s("ISO 4217 code, e.g. SEK."),
        "seq": { "type": "integer", "minimum": 1, "description": "Version of the object (the simulator's; Fondo's objects carry none)." },
    })
}

/// A reference to a schema under `components.schemas`.
pub fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The payload schema of one event type. `current`/`previous` refer to the object schemas under
/// `components.schemas` (see [`object_schema`]); the caller adds those it refers to.
pub fn event_schema(event_type: &str, opts: SchemaOptions) -> Value {
    if event_type == "heartbeat" {
        return json!({
            "type": "object",
            "description": "Fondo's keep-alive frame; published only by a route that names `heartbeat`.",
            "properties": { "eventType": { "const": "heartbeat" } },
            "required": ["eventType"],
        });
    }
    if event_type == GAP_MARKER_TYPE {
        return gap_marker_schema();
    }
    if !crate::event::KNOWN_EVENT_TYPES.contains(&event_type) {
        return other_event(opts);
    }
    let (entity, action) = event_type.split_once('.').unwrap_or((event_type, ""));
    let object = schema_ref(entity);
    let nullable = json!({ "anyOf": [object.clone(), { "type": "null" }] });
    let mut required = Vec::new();
    if opts.event_type_required {
        required.push("eventType");
    }
    let (current, previous, description) = match action {
        "create" => {
            required.push("current");
            (object, None, "A new object: `current` is its state.")
        }
        "update" => {
            required.push("current");
            (
                object,
                Some(nullable),
                "A changed object: `current` is its new state, `previous` (when Fondo sends it) the one before.",
            )
        }
        "delete" => {
            required.push("previous");
            (
                nullable,
                Some(schema_ref(entity)),
                "A deleted object: `previous` is its last state.",
            )
        }
        _ => (
            nullable,
            None,
            "The object, when Fondo sends it (the reference does not say).",
        ),
    };
    let mut properties = Map::new();
    properties.insert("eventType".into(), json!({ "const": event_type }));
    properties.insert("current".into(), current);
    if let Some(p) = previous {
        properties.insert("previous".into(), p);
    }
    json!({
        "type": "object",
        "title": event_type,
        "description": description,
        "properties": properties,
        "required": required,
    })
}

/// Any event type without a specific schema: Fondo may add types, and a route matching a glob
/// publishes them too.
pub fn other_event(opts: SchemaOptions) -> Value {
    let obj = json!({ "type": ["object", "null"] });
    let mut required = Vec::new();
    if opts.event_type_required {
        required.push("eventType");
    }
    json!({
        "type": "object",
        "description": "An event type this document has no specific schema for (a type Fondo added later).",
        "properties": {
            "eventType": { "type": "string", "minLength": 1 },
            "current": obj,
            "previous": obj,
        },
        "required": required,
    })
}

fn gap_marker_schema() -> Value {
    json!({
        "type": "object",
        "description": "Published by the bridge after a WebSocket reconnect: Fondo did not replay what it sent while the stream was down.",
        "properties": {
            "eventType": { "const": GAP_MARKER_TYPE },
            "clientId": { "type": "string", "description": "The stream's client id." },
            "from": { "type": "string", "format": "date-time", "description": "When the stream went down." },
            "to": { "type": "string", "format": "date-time", "description": "When it was back." },
            "seconds": { "type": "number", "minimum": 0, "description": "Length of the gap." },
        },
        "required": ["eventType", "clientId", "from", "to", "seconds"],
    })
}

/// The entity schemas an event type's schema refers to.
pub fn referenced_entity(event_type: &str) -> Option<&str> {
    if !crate::event::KNOWN_EVENT_TYPES.contains(&event_type) || event_type == "heartbeat" {
        return None;
    }
    let entity = event_type.split_once('.').map_or(event_type, |(e, _)| e);
    ENTITIES.contains(&entity).then_some(entity)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::event::KNOWN_EVENT_TYPES;

    const STRICT: SchemaOptions = SchemaOptions {
        event_type_required: true,
    };

    fn required(s: &Value) -> Vec<&str> {
        s["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_known_type_has_a_specific_schema_with_its_object() {
        for t in KNOWN_EVENT_TYPES {
            assert!(is_described(t), "{t}");
            let s = event_schema(t, STRICT);
            assert_eq!(s["type"], "object", "{t}");
            assert_eq!(s["properties"]["eventType"]["const"], *t, "{t}");
            assert!(required(&s).contains(&"eventType"), "{t}");
            if let Some(entity) = referenced_entity(t) {
                assert!(object_schema(entity).is_some(), "{t}: no {entity} schema");
            }
        }
    }

    #[test]
    fn actions_require_what_they_carry() {
        assert_eq!(
            required(&event_schema("order.create", STRICT)),
            ["eventType", "current"]
        );
        assert_eq!(
            required(&event_schema("account.update", STRICT)),
            ["eventType", "current"]
        );
        assert_eq!(
            required(&event_schema("cashTransaction.delete", STRICT)),
            ["eventType", "previous"]
        );
        assert_eq!(
            required(&event_schema("instrument.reloaded", STRICT)),
            ["eventType"]
        );
        let s = event_schema("journey.delete", STRICT);
        assert_eq!(
            s["properties"]["previous"]["$ref"],
            "#/components/schemas/journey"
        );
    }

    #[test]
    fn event_type_is_optional_when_a_header_can_carry_it() {
        let loose = SchemaOptions {
            event_type_required: false,
        };
        assert_eq!(
            required(&event_schema("account.update", loose)),
            ["current"]
        );
        assert!(required(&other_event(loose)).is_empty());
        // The heartbeat and the gap marker always carry their type.
        assert!(required(&event_schema("heartbeat", loose)).contains(&"eventType"));
        assert!(required(&event_schema(GAP_MARKER_TYPE, loose)).contains(&"eventType"));
    }

    #[test]
    fn objects_describe_fields_but_only_the_account_requires_one() {
        for e in ENTITIES {
            let s = object_schema(e).unwrap();
            assert!(
                s["properties"].as_object().is_some_and(|p| p.len() > 3),
                "{e}"
            );
            assert!(s.get("additionalProperties").is_none(), "{e}: closed");
        }
        assert_eq!(required(&object_schema("account").unwrap()), ["ref"]);
        assert!(object_schema("spaceship").is_none());
    }

    #[test]
    fn unknown_types_get_the_generic_schema() {
        assert!(!is_described("order.cancel"));
        assert_eq!(event_schema("order.cancel", STRICT), other_event(STRICT));
        assert_eq!(referenced_entity("order.cancel"), None);
    }
}
