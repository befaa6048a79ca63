//! The subject of a client certificate as a user name: its Common Name
//! (`use_identity_as_username`) or the whole subject as Mosquitto prints it
//! (`use_subject_as_username`: OpenSSL's RFC 2253 form, `CN=client,O=Example,C=GB`),
//! or its first Subject Alternative Name of the kinds `use_san_as_username` lists (a
//! DNS name, an e-mail address, a URI such as a SPIFFE ID).
//!
//! The certificate was verified by the TLS handshake before it comes here; this reads
//! only its subject, with a small DER reader that checks every length against what is
//! left and gives up (no name) on anything it does not understand.

use rustls::pki_types::CertificateDer;

use crate::config::SanKind;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0] EXPLICIT`: the certificate's version.
const VERSION: u8 = 0xA0;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject's first Common Name.
pub(super) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let mut rdns = Der(subject(cert)?);
    while let Some((SET, rdn)) = rdns.next() {
        let mut attributes = Der(rdn);
        while let Some((SEQUENCE, attribute)) = attributes.next() {
            let (oid, value) = attribute_parts(attribute)?;
            if oid == COMMON_NAME {
                return text(value.0, value.1);
            }
        }
    }
    None
}

/// The whole subject as OpenSSL's `XN_FLAG_RFC2253` prints it (what Mosquitto uses):
/// the last relative name first, `,` between them and `+` within one, OpenSSL's short
/// attribute names, RFC 2253 escapes, and bytes beyond ASCII as `\XX`.
pub(super) fn rfc4514(cert: &CertificateDer<'_>) -> Option<String> {
    let mut rdns = Der(subject(cert)?);
    let mut parts = Vec::new();
    while let Some((tag, rdn)) = rdns.next() {
        if tag != SET {
            return None;
        }
        let mut attributes = Der(rdn);
        let mut names = Vec::new();
        while let Some((tag, attribute)) = attributes.next() {
            if tag != SEQUENCE {
                return None;
            }
            let (oid, (value_tag, value)) = attribute_parts(attribute)?;
            let value = match text(value_tag, value) {
                Some(text) => escape(&text),
                // Not a string: its DER, in hex, as RFC 4514 says.
                None => {
                    let mut hex = String::from("#");
                    hex.push_str(&to_hex(&[value_tag]));
                    hex.push_str(&to_hex(&der_length(value.len())));
                    hex.push_str(&to_hex(value));
                    hex
                }
            };
            names.push(format!("{}={value}", attribute_name(oid)?));
        }
        parts.push(names.join("+"));
    }
    parts.reverse();
    Some(parts.join(","))
}

/// `[3] EXPLICIT`: the certificate's extensions.
const EXTENSIONS: u8 = 0xA3;
/// 2.5.29.17, id-ce-subjectAltName.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];
const OCTET_STRING: u8 = 0x04;

/// The first Subject Alternative Name, in the certificate's order, of one of `kinds`.
pub(super) fn subject_alt_name(cert: &CertificateDer<'_>, kinds: &[SanKind]) -> Option<String> {
    let mut names = Der(alt_names(cert)?);
    while let Some((tag, name)) = names.next() {
        // GeneralName, IMPLICIT tags: [1] rfc822Name, [2] dNSName, [6] URI (IA5String).
        let kind = match tag {
            0x81 => SanKind::Email,
            0x82 => SanKind::Dns,
            0x86 => SanKind::Uri,
            _ => continue,
        };
        if kinds.contains(&kind) {
            return std::str::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty())
                .map(str::to_owned);
        }
    }
    None
}

/// The content of the subjectAltName extension's `GeneralNames`, if it has one.
fn alt_names<'a>(cert: &'a CertificateDer<'_>) -> Option<&'a [u8]> {
    let (SEQUENCE, certificate) = Der(cert.as_ref()).next()? else {
        return None;
    };
    let (SEQUENCE, tbs) = Der(certificate).next()? else {
        return None;
    };
    let mut fields = Der(tbs);
    let extensions = loop {
        match fields.next()? {
            (EXTENSIONS, e) => break e,
            _ => continue,
        }
    };
    let (SEQUENCE, extensions) = Der(extensions).next()? else {
        return None;
    };
    let mut extensions = Der(extensions);
    while let Some((SEQUENCE, extension)) = extensions.next() {
        let mut parts = Der(extension);
        let (OID, oid) = parts.next()? else {
            return None;
        };
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        // `critical` (a BOOLEAN) may come before the value.
        let mut value = parts.next()?;
        if value.0 != OCTET_STRING {
            value = parts.next()?;
        }
        let (OCTET_STRING, value) = value else {
            return None;
        };
        let (SEQUENCE, names) = Der(value).next()? else {
            return None;
        };
        return Some(names);
    }
    None
}

/// The content of the certificate's subject `Name` (its RDN sequence).
fn subject<'a>(cert: &'a CertificateDer<'_>) -> Option<&'a [u8]> {
    let (SEQUENCE, certificate) = Der(cert.as_ref()).next()? else {
        return None;
    };
    let (SEQUENCE, tbs) = Der(certificate).next()? else {
        return None;
    };
    let mut fields = Der(tbs);
    let mut field = fields.next()?;
    if field.0 == VERSION {
        field = fields.next()?;
    }
    // serialNumber (the field in hand), signature, issuer, validity, then subject.
    for _ in 0..4 {
        field = fields.next()?;
    }
    match field {
        (SEQUENCE, subject) => Some(subject),
        _ => None,
    }
}

/// A DER element: its tag and content.
type Element<'a> = (u8, &'a [u8]);

/// An `AttributeTypeAndValue`: the type's OID and the value's tag and content.
fn attribute_parts(attribute: &[u8]) -> Option<(&[u8], Element<'_>)> {
    let mut parts = Der(attribute);
    let (OID, oid) = parts.next()? else {
        return None;
    };
    Some((oid, parts.next()?))
}

/// A string value as text, or `None` for what is not a string.
fn text(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString, NumericString
        0x0C | 0x13 | 0x16 | 0x1A | 0x12 => String::from_utf8(value.to_vec()).ok(),
        // TeletexString: taken as Latin-1, as OpenSSL does.
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1E => {
            let units = value
                .chunks_exact(2)
                .map(|pair| pair.iter().fold(0u16, |acc, &b| (acc << 8) | u16::from(b)));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString: UTF-32BE.
        0x1C => value
            .chunks_exact(4)
            .map(|quad| char::from_u32(quad.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))))
            .collect(),
        _ => None,
    }
}

/// OpenSSL's short name of an attribute type, or its dotted OID.
fn attribute_name(oid: &[u8]) -> Option<String> {
    let known = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x04] => "SN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "street",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        [0x55, 0x04, 0x0C] => "title",
        [0x55, 0x04, 0x2A] => "GN",
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01] => "UID",
        _ => return dotted(oid),
    };
    Some(known.to_owned())
}

/// An OID's dotted decimal form.
fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = value.checked_mul(128)?.checked_add(u64::from(b & 0x7F))?;
        if b & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    let (&first, rest) = arcs.split_first()?;
    let (a, b) = match first {
        0..40 => (0, first),
        40..80 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut out = format!("{a}.{b}");
    for arc in rest {
        out.push('.');
        out.push_str(&arc.to_string());
    }
    (value == 0 && oid.last().is_some_and(|b| b & 0x80 == 0)).then_some(out)
}

/// RFC 2253 escapes as OpenSSL writes them: `\` before `,+"\<>;`, before a leading `#`
/// or space and a trailing space; control characters and every byte beyond ASCII as
/// `\XX`.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.len().saturating_sub(1);
    for (i, b) in value.bytes().enumerate() {
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0..0x20 | 0x7F.. => {
                out.push('\\');
                out.push_str(&to_hex(&[b]));
            }
            _ => out.push(char::from(b)),
        }
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|&b| b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// DER elements one after another: tag and content, each length checked against what is
/// left.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn next(&mut self) -> Option<Element<'a>> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, rest) = rest.split_at_checked(n)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, rest)
        };
        let (content, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some((tag, content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dn: &[(rcgen::DnType, rcgen::DnValue)]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in dn {
            params.distinguished_name.push(ty.clone(), value.clone());
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    fn utf8(s: &str) -> rcgen::DnValue {
        rcgen::DnValue::Utf8String(s.to_owned())
    }

    #[test]
    fn common_name_and_subject() {
        let c = cert(&[
            (
                rcgen::DnType::CountryName,
                rcgen::DnValue::PrintableString("GB".try_into().unwrap()),
            ),
            (rcgen::DnType::OrganizationName, utf8("Example, Ltd")),
            (rcgen::DnType::CommonName, utf8("sensor-7")),
        ]);
        assert_eq!(common_name(&c).as_deref(), Some("sensor-7"));
        assert_eq!(
            rfc4514(&c).as_deref(),
            Some("CN=sensor-7,O=Example\\, Ltd,C=GB")
        );
    }

    #[test]
    fn escapes_and_unknown_types() {
        let c = cert(&[
            (
                rcgen::DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 99999, 1]),
                utf8("x"),
            ),
            (rcgen::DnType::CommonName, utf8(" #Jürgen+1 ")),
        ]);
        assert_eq!(
            rfc4514(&c).as_deref(),
            Some("CN=\\ #J\\C3\\BCrgen\\+1\\ ,1.3.6.1.4.1.99999.1=x")
        );
        let none = cert(&[(rcgen::DnType::OrganizationName, utf8("no cn"))]);
        assert_eq!(common_name(&none), None);
        assert_eq!(rfc4514(&none).as_deref(), Some("O=no cn"));
    }

    #[test]
    fn subject_alternative_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![
            rcgen::SanType::IpAddress([10, 0, 0, 1].into()),
            rcgen::SanType::URI("spiffe://example.org/sensor/7".try_into().unwrap()),
            rcgen::SanType::Rfc822Name("dev@example.org".try_into().unwrap()),
            rcgen::SanType::DnsName("sensor-7.example.org".try_into().unwrap()),
        ];
        let c = params.self_signed(&key).unwrap().der().clone();
        let san = |kinds: &[SanKind]| subject_alt_name(&c, kinds);
        assert_eq!(
            san(&[SanKind::Dns]).as_deref(),
            Some("sensor-7.example.org")
        );
        assert_eq!(san(&[SanKind::Email]).as_deref(), Some("dev@example.org"));
        assert_eq!(
            san(&[SanKind::Dns, SanKind::Uri]).as_deref(),
            Some("spiffe://example.org/sensor/7"),
            "the first in the certificate's order"
        );
        let none = cert(&[(rcgen::DnType::CommonName, utf8("no san"))]);
        assert_eq!(subject_alt_name(&none, &[SanKind::Dns]), None);
        let der = c.as_ref();
        for len in 0..der.len() {
            let cut = CertificateDer::from(der.get(..len).unwrap().to_vec());
            let _ = subject_alt_name(&cut, &[SanKind::Dns]);
        }
        for i in 0..der.len() {
            let mut bad = der.to_vec();
            bad[i] ^= 0x80;
            let _ = subject_alt_name(&CertificateDer::from(bad), &[SanKind::Uri]);
        }
    }

    #[test]
    fn garbage_gives_no_name() {
        let c = cert(&[(rcgen::DnType::CommonName, utf8("ok"))]);
        let der = c.as_ref();
        // Every truncation and every single-byte corruption either reads a name or
        // gives up: no panic, no read out of bounds.
        for len in 0..der.len() {
            let cut = CertificateDer::from(der.get(..len).unwrap().to_vec());
            let _ = (common_name(&cut), rfc4514(&cut));
        }
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bad = der.to_vec();
                bad[i] ^= flip;
                let bad = CertificateDer::from(bad);
                let _ = (common_name(&bad), rfc4514(&bad));
            }
        }
        assert_eq!(dotted(&[0x2B, 0x06, 0x01]).as_deref(), Some("1.3.6.1"));
        assert_eq!(dotted(&[0x2B, 0x86]), None);
        assert_eq!(der_length(300), vec![0x82, 0x01, 0x2C]);
    }
}
