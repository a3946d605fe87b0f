//! `DOMException` (Web IDL): an `Error` subclass whose `name` tells the kind
//! (`InvalidCharacterError`, `DataCloneError`, ...) and whose `code` is the
//! legacy number of that name.

/// Shim (no natives).
pub const JS: &str = r#"(function () {
  const CODES = { IndexSizeError: 1, HierarchyRequestError: 3, WrongDocumentError: 4,
    InvalidCharacterError: 5, NoModificationAllowedError: 7, NotFoundError: 8, NotSupportedError: 9,
    InvalidStateError: 11, SyntaxError: 12, InvalidModificationError: 13, NamespaceError: 14,
    InvalidAccessError: 15, TypeMismatchError: 17, SecurityError: 18, NetworkError: 19, AbortError: 20,
    URLMismatchError: 21, QuotaExceededError: 22, TimeoutError: 23, InvalidNodeTypeError: 24,
    DataCloneError: 25 };
  class DOMException extends Error {
    #name; #message;
    constructor(message = '', name = 'Error') { super(); this.#message = `${message}`; this.#name = `${name}`; }
    get name() { return this.#name; }
    get message() { return this.#message; }
    get code() { return Object.hasOwn(CODES, this.#name) ? CODES[this.#name] : 0; }
  }
  Object.defineProperty(DOMException.prototype, Symbol.toStringTag, { value: 'DOMException', configurable: true });
  return { DOMException };
})"#;
