//! String-coded enums that tolerate codes from newer peers: a code this build
//! does not know decodes to `Unknown(code)` instead of failing the message.

/// Define a string-coded enum with an `Unknown(String)` variant, serialized as
/// its snake_case code.
#[macro_export]
#[doc(hidden)]
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $code:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A code this build does not know (from a newer peer).
            Unknown(String),
        }

        impl $name {
            /// The wire code.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $code, )*
                    Self::Unknown(code) => code.as_str(),
                }
            }

            /// Parse a wire code; unknown codes become `Unknown`.
            pub fn from_code(code: &str) -> Self {
                match code {
                    $( $code => Self::$variant, )*
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let code = <::std::string::String as ::serde::Deserialize>::deserialize(d)?;
                Ok(Self::from_code(&code))
            }
        }
    };
}
